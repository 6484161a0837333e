"""Reading a peer's SPIFFE ID from what the TLS layer verified, and the client's check."""

from __future__ import annotations

from typing import Any, cast

import pytest

from tulle.dataplane.security.spiffe import expect, spiffe_id
from tulle.dataplane.telemetry.metrics import CounterChild

ID = "spiffe://mesh.local/ns/default/sa/web"


class Peer:
    """What `ssl.SSLObject.getpeercert()` answers, scripted."""

    def __init__(self, cert: dict[str, Any] | Exception) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, Any]:
        if isinstance(self.cert, Exception):
            raise self.cert
        return self.cert


def sans(*pairs: tuple[str, str]) -> Peer:
    return Peer({"subjectAltName": pairs})


@pytest.mark.parametrize(("peer", "want"), [
    (sans(("URI", ID)), ID),
    (sans(("DNS", "web.example"), ("URI", ID)), ID),
    (Peer({}), ""),  # not verified: the stdlib gives an empty dict
    (sans(("URI", ID), ("URI", "spiffe://mesh.local/ns/x/sa/y")), ""),  # two URIs: no SVID
    (sans(("URI", "https://mesh.local/ns/default/sa/web")), ""),
    (sans(("URI", "spiffe://")), ""),
    (sans(("DNS", "web.example")), ""),
    (Peer(ValueError("handshake not done")), ""),
    (None, ""),
])
def test_the_identity_is_the_single_spiffe_uri_of_a_verified_certificate(
        peer: Peer | None, want: str) -> None:
    assert spiffe_id(cast(Any, peer)) == want


def test_the_check_passes_expected_ids_and_counts_and_names_the_others() -> None:
    counter = CounterChild()
    check = expect([ID], counter)
    assert check(cast(Any, sans(("URI", ID)))) is None
    assert counter.value == 0
    other = "spiffe://mesh.local/ns/default/sa/impostor"
    assert check(cast(Any, sans(("URI", other)))) == (
        f"TLS: server identity {other} is not one expected for the destination")
    assert check(cast(Any, Peer({}))) == (
        "TLS: server identity (none) is not one expected for the destination")
    assert counter.value == 2
