"""Whether a string is a numeric IP address, and of which family, without `ipaddress`.

The contract's validator asks it of every address a config carries, and the proxy's dialler of
every upstream it connects to.  `socket.inet_pton` answers as `ipaddress.ip_address` does for
everything without a zone (`fe80::1%eth0`; `tests/unit/proxyconfig/test_validate.py` compares
them), so `ipaddress` (0.3 MB) is imported only for a zone (ADR 0068).
"""

from __future__ import annotations

import socket


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
