"""The facts an opaque TCP connection's network filters see (`tcp_proxy.transport_facts`):
an IPv4 client of a dual-stack socket, and the local end, as IPv4 addresses (ADR 0093)."""

from __future__ import annotations

from tulle.dataplane.network.tcp_proxy import address_of


def test_an_ipv4_mapped_peer_and_local_address_are_ipv4() -> None:
    assert address_of(("::ffff:10.0.0.5", 4321, 0, 0)) == ("10.0.0.5", 4321)
    assert address_of(("::1", 80, 0, 0)) == ("::1", 80)
    assert address_of(("10.0.0.5", 1)) == ("10.0.0.5", 1)
    assert address_of(None) is None
