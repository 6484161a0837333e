"""A numeric address told from a name without `ipaddress` (ADR 0068), as
`ipaddress.ip_address` decides: what the validator and the proxy's dialler both ask."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tulle.proxyconfig.address import (
    matched_network,
    numeric_family,
    peer_host,
    peer_ip,
    unmapped,
)


def _reference(host: str) -> socket.AddressFamily | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


@pytest.mark.parametrize("host", [
    "127.0.0.1", "10.0.0.01", "::1", "fe80::1%lo", "::ffff:10.0.0.1", "1.2.3.4%x",
    "localhost", "catalog.shop.svc.cluster.local", "", "1.2.3", "[::1]", "1.2.3.4\0",
])
def test_numeric_family_agrees_with_ipaddress(host: str) -> None:
    assert numeric_family(host) == _reference(host)


@pytest.mark.parametrize(("text", "expected"), [
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),  # an IPv4-mapped range is the IPv4 range it names
    ("::ffff:10.1.2.3", "10.1.2.3/32"),
    ("::FFFF:0A01:0203/128", "10.1.2.3/32"),
    ("::ffff:0:0/96", "0.0.0.0/0"),
    ("::ffff:192.168.1.7/112", "192.168.0.0/16"),  # host bits dropped, as for any block
    ("::ffff:0:0/95", "::fffe:0:0/95"),  # wider than the mapped block: stays IPv6
    ("::/0", "::/0"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("fd00::1/64", "fd00::/64"),
])
def test_matched_network_reads_an_ipv4_mapped_range_as_ipv4(text: str, expected: str) -> None:
    assert str(matched_network(text)) == expected


def test_matched_network_refuses_what_is_no_cidr() -> None:
    with pytest.raises(ValueError):
        matched_network("10.0.0.0/33")


@pytest.mark.parametrize(("host", "expected"), [
    ("::ffff:10.0.0.5", "10.0.0.5"), ("::FFFF:A00:5", "10.0.0.5"), ("10.0.0.5", "10.0.0.5"),
    ("fd00::5", "fd00::5"), ("::5", "::5"), ("pod-a", "pod-a"), ("fe80::1%eth0", "fe80::1%eth0"),
])
def test_unmapped_gives_an_ipv4_peer_its_ipv4_address(host: str, expected: str) -> None:
    assert unmapped(host) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("::ffff:10.0.0.5", "10.0.0.5"), ("10.0.0.5", "10.0.0.5"), ("fd00::5", "fd00::5"),
    ("fe80::1%eth0", "fe80::1"),  # the zone is dropped: ranges have none
    ("::ffff:10.0.0.5%eth0", "10.0.0.5"),
    ("pod-a", None), ("", None), ("10.0.0.256", None),
])
def test_peer_ip_is_the_address_ranges_are_compared_with(text: str, expected: str | None) -> None:
    got = peer_ip(text)
    assert (None if got is None else str(got)) == expected


def test_a_mapped_peer_is_in_the_ipv4_range_however_the_range_is_written() -> None:
    peer = peer_ip("::ffff:10.1.2.3")
    assert peer is not None
    assert peer in matched_network("10.0.0.0/8")
    assert peer in matched_network("::ffff:10.0.0.0/104")
    assert peer not in matched_network("fd00::/8")


def test_a_connections_peer_host_is_unmapped_as_its_facts_carry_it() -> None:
    # ADR 0093: what x-forwarded-for, rate-limit keys and logs get for a dual-stack socket.
    assert peer_host("::ffff:10.0.0.5") == "10.0.0.5"
    assert peer_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert peer_host("10.0.0.5") == "10.0.0.5"
    assert peer_host("::1") == "::1"
    assert peer_host("fe80::1%eth0") == "fe80::1%eth0"
