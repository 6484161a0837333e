"""Whether a string is a numeric IP address, and of which family, without `ipaddress`.

The contract's validator asks it of every address a config carries, and the proxy's dialler of
every upstream it connects to.  `socket.inet_pton` answers as `ipaddress.ip_address` does for
everything without a zone (`fe80::1%eth0`; `tests/unit/proxyconfig/test_validate.py` compares
them), so `ipaddress` (0.3 MB) is imported only for a zone (ADR 0068).
"""

from __future__ import annotations

import socket

from tulle.errors import FieldError


def numeric_family(host: str) -> socket.AddressFamily | None:
    """`AF_INET` or `AF_INET6` for a numeric address; None for anything else (a name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            continue
        return family
    if "%" not in host:
        return None
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def additional_address_errors(address: str, more: list[str], path: str) -> list[FieldError]:
    """A listener's or the resolver's `additional_addresses` (ADR 0088): numeric IP addresses,
    none twice and none the primary `address`."""
    out: list[FieldError] = []
    seen = {address}
    for k, a in enumerate(more):
        where = f"{path}.additional_addresses[{k}]"
        if numeric_family(a) is None:
            out.append(FieldError(where, f"must be an IP address, got {a!r}"))
        elif a in seen:
            out.append(FieldError(where, f"{a} is already an address of this socket's owner"))
        seen.add(a)
    return out
