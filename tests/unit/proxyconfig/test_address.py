"""A numeric address told from a name without `ipaddress` (ADR 0068), as
`ipaddress.ip_address` decides: what the validator and the proxy's dialler both ask."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tulle.proxyconfig.address import numeric_family


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
