"""What the agent verifies the control plane by, and the errors when it has nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from tests.support.ca import TestCA

from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.dataplane.stream_tls import StreamTrust, StreamTrustError
from tulle.proxyconfig.stream import WorkloadInfo

PIN = "sha256:" + "12" * 32


def _token(prefix: str, claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{body}.c2lnbmF0dXJl"


def test_pins_come_from_the_token_and_anchors_from_the_ca_file(tmp_path: Path) -> None:
    ca = TestCA()
    f = tmp_path / "ca.pem"
    f.write_text(ca.pem)
    t = StreamTrust.from_options(_token("tbt2", {"ca": [PIN]}), f)
    assert t.pins == [PIN] and t.anchors == [ca.pem]
    assert StreamTrust.from_options(_token("tbt1", {}), f).anchors == [ca.pem]


def test_a_tbt1_token_without_a_ca_file_is_refused_with_the_reason() -> None:
    old = _token("tbt1", {"id": "x"})
    with pytest.raises(ValueError, match="carries no CA pin") as err:
        StreamTrust.from_options(old)
    assert old not in str(err.value)
    with pytest.raises(ValueError, match="carries no CA pin"):
        Agent(ProxyServer(), [("127.0.0.1", 9)], WorkloadInfo(name="w", namespace="n"),
              token=old)


def test_a_bad_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--ca-file .*missing.pem: No such file"):
        StreamTrust.from_options("", tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"--ca-file .*junk.pem: no PEM certificate"):
        StreamTrust.from_options("", junk)


async def test_with_nothing_to_verify_by_it_does_not_even_connect() -> None:
    with pytest.raises(StreamTrustError, match="nothing to verify"):
        await StreamTrust().connect("127.0.0.1", 9)


def test_the_bundle_received_with_a_certificate_is_trusted_from_then_on() -> None:
    t = StreamTrust(pins=[PIN])
    t.learn([])
    assert t.anchors == []
    t.learn(["PEM-A", "PEM-B"])
    assert t.anchors == ["PEM-A", "PEM-B"]
    assert "PEM" not in repr(t)
