"""The CA pin and the control plane's SPIFFE ID, as both ends of the stream read them."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.ca import TestCA

from tulle.proxyconfig.stream_trust import (
    PinError,
    ca_pin,
    check_pin,
    control_plane_id,
    is_control_plane_id,
    token_pins,
)


def test_the_pin_is_the_sha256_of_the_subject_public_key_info() -> None:
    ca = TestCA()
    spki = ca.cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    want = "sha256:" + hashlib.sha256(spki).hexdigest()
    assert ca_pin(ca.cert) == want
    assert ca_pin(ca.cert.public_bytes(serialization.Encoding.DER)) == want
    assert ca_pin(TestCA().cert) != want
    assert check_pin(want.upper().replace("SHA256", "sha256")) == want


@pytest.mark.parametrize("bad", ["", "sha256:", "sha256:xyz", "md5:" + "a" * 32,
                                 "sha256:" + "a" * 63])
def test_a_malformed_pin_is_refused(bad: str) -> None:
    with pytest.raises(PinError, match="expected sha256:<64 hex digits>"):
        check_pin(bad)


def test_only_the_control_planes_path_names_the_control_plane() -> None:
    assert control_plane_id("mesh.local") == "spiffe://mesh.local/ns/tulle-system/sa/control-plane"
    assert is_control_plane_id(control_plane_id("cluster.local"))
    for other in ("spiffe://cluster.local/ns/shop/sa/web",
                  "spiffe://cluster.local/ns/tulle-system/sa/control-plane/x",
                  "spiffe:///ns/tulle-system/sa/control-plane",
                  "https://cluster.local/ns/tulle-system/sa/control-plane", ""):
        assert not is_control_plane_id(other), other


@pytest.mark.parametrize("token", ["", "tbt2", "tbt2.a.b.c", "tbt3.e30.x", "tbt2.!!!.x",
                                   "tbt2.e30.x", "tbt2.eyJjYSI6W119.x",
                                   "tbt2.eyJjYSI6WyJub3BlIl19.x"])
def test_a_token_without_a_readable_pin_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(PinError) as err:
        token_pins(token)
    assert "malformed" in str(err.value) or "expected sha256" in str(err.value)
    if len(token) > 8:
        assert token not in str(err.value)


def test_pins_are_read_from_a_tbt2_token() -> None:
    import base64
    import json

    pin = "sha256:" + "0f" * 32
    body = base64.urlsafe_b64encode(json.dumps({"ca": [pin]}).encode()).rstrip(b"=").decode()
    assert token_pins(f"tbt2.{body}.mac") == [pin]
    assert x509  # the module is what reads certificates for `ca_pin`
