"""Whether a string is a numeric IP address, and of which family, without `ipaddress`.

The contract's validator asks it of every address a config carries, and the proxy's dialler of
every upstream it connects to.  `socket.inet_pton` answers as `ipaddress.ip_address` does for
everything without a zone (`fe80::1%eth0`; `tests/unit/proxyconfig/test_validate.py` compares
them), so `ipaddress` (0.3 MB) is imported only for a zone (ADR 0068).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from tulle.errors import FieldError

if TYPE_CHECKING:
    import ipaddress

    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def packed(host: str) -> tuple[socket.AddressFamily, bytes] | None:
    """An address's family and value (so `::1` and `0:0::1` are one); None for a name or a
    zone-scoped address."""
    fam = numeric_family(host)
    if fam is None or "%" in host:
        return None
    return fam, socket.inet_pton(fam, host)


def same_address(a: str, b: str) -> bool:
    """One address however written (`::1` is `0:0::1`, `FD00::AB` is `fd00::ab`); text that is
    no address (a name, a zone-scoped one) equals only itself."""
    ka, kb = packed(a), packed(b)
    return ka == kb if ka is not None and kb is not None else a == b


def unmapped(host: str) -> str:
    """An IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, what a dual-stack socket reports for
    an IPv4 peer) as its IPv4 address; any other text unchanged."""
    key = packed(host)
    if key is not None and key[0] == socket.AF_INET6 and key[1][:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, key[1][12:])
    return host


def peer_host(host: str) -> str:
    """A connection's peer (or local) address as its facts carry it (ADR 0093): `unmapped`,
    behind a prefix check, since the kernel writes an IPv4-mapped address one way and every
    accepted connection passes here."""
    return unmapped(host) if host.startswith("::ffff:") else host


def peer_ip(text: str) -> IPAddress | None:
    """A peer's or a destination's address as it is compared with ranges (ADR 0090): an
    IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, a dual-stack socket) as the IPv4 address it
    names, an IPv6 zone (`%eth0`) dropped; None for text that is no address.  The one reading
    that authorization, the source-IP filter and the listener's chain selection share, so a
    peer matches the same ranges in each."""
    import ipaddress  # not at module level (ADR 0068)

    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def matched_network(text: str) -> IPNetwork:
    """A CIDR (or one address) as peers and destinations are compared with it.  A peer's
    IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, a dual-stack socket) is compared as its IPv4
    address, so an IPv4-mapped range (`::ffff:10.0.0.0/104`) is the IPv4 range it names
    (`10.0.0.0/8`): written either way, it matches the same peers.  A range wider than the
    mapped block stays IPv6.  `ValueError` for text that is no CIDR."""
    import ipaddress  # not at module level (ADR 0068)

    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        v4 = net.network_address.ipv4_mapped
        if v4 is not None:
            return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def hostport(host: str, port: int) -> str:
    """`host:port` as a URL authority writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


WILDCARDS = {socket.AF_INET: bytes(4), socket.AF_INET6: bytes(16)}
_MAPPED = bytes(10) + b"\xff\xff"


def overlaps(a: tuple[socket.AddressFamily, bytes], b: tuple[socket.AddressFamily, bytes]) -> bool:
    """Two listening addresses on one port that the kernel would not both bind: the same
    address, or a wildcard and any address of its family."""
    return a[0] == b[0] and (a[1] == b[1] or WILDCARDS[a[0]] in (a[1], b[1]))


def additional_address_errors(address: str, more: list[str], path: str) -> list[FieldError]:
    """A listener's or the resolver's `additional_addresses` (ADR 0088): numeric IP addresses
    with no zone and not IPv4-mapped (bind them as IPv4), none the same as another or as the
    primary `address` however written, nor overlapping it (a wildcard beside an address of its
    family)."""
    out: list[FieldError] = []
    seen = [x for x in (packed(address),) if x is not None]
    for k, a in enumerate(more):
        where = f"{path}.additional_addresses[{k}]"
        key = packed(a)
        if key is None:
            out.append(FieldError(where, f"must be an IP address without a zone, got {a!r}"))
            continue
        if key[0] == socket.AF_INET6 and key[1].startswith(_MAPPED):
            out.append(FieldError(where, f"{a} is an IPv4-mapped address: give the IPv4 "
                                         "address itself"))
            continue
        if any(overlaps(key, b) for b in seen):
            out.append(FieldError(where, f"{a} is already an address of this socket's owner "
                                         "(or overlaps one: a wildcard takes its whole family)"))
        seen.append(key)
    return out
