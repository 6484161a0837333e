"""The original destination of an iptables-redirected connection.

`iptables -t nat ... -j REDIRECT` rewrites a connection's destination to the proxy's port; the
address the client meant is kept by conntrack and read back with
`getsockopt(SOL_IP, SO_ORIGINAL_DST)` (IPv4) or `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`
(IPv6), both option 80.  The kernel answers with a `sockaddr_in` / `sockaddr_in6`.

A connection that was not NATed answers with its own local address when conntrack tracks it
(the transparent listener treats that as a loop), and fails with ENOENT when conntrack never saw
it; both cases are the caller's to judge, this module only reads and parses.
"""

from __future__ import annotations

import socket
from typing import Final, Protocol

SO_ORIGINAL_DST: Final = 80
"""linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h) is also 80."""
SOL_IPV6: Final = 41
_SOCKADDR_IN: Final = 16
_SOCKADDR_IN6: Final = 28


class _SockLike(Protocol):
    """A socket, or the pseudo-socket an asyncio/uvloop transport hands out."""

    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(ip, port) from a `sockaddr_in` or `sockaddr_in6`; None when it is neither.

    The family is in host byte order (Linux is little-endian on every platform we run on, but
    both orders are accepted); the port and address are in network order.
    """
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], "little")
    if family not in (socket.AF_INET, socket.AF_INET6):
        family = int.from_bytes(raw[:2], "big")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


def original_destination(sock: _SockLike) -> tuple[str, int] | None:
    """Where the client meant to connect, or None when the kernel has no record of a redirect."""
    if sock.family == socket.AF_INET6:
        level, size = SOL_IPV6, _SOCKADDR_IN6
    else:
        level, size = socket.SOL_IP, _SOCKADDR_IN
    try:
        raw = sock.getsockopt(level, SO_ORIGINAL_DST, size)
    except OSError:
        return None
    dst = parse_sockaddr(raw)
    if dst is not None and dst[0].startswith("::ffff:") and "." in dst[0]:
        dst = (dst[0][7:], dst[1])  # an IPv4 client on a dual-stack socket
    return dst
