"""A listener's listening sockets: one per address it serves, bound or taken over.

Why a module: a listener may serve more than one address on its port
(`Listener.additional_addresses`, ADR 0088) -- a transparent sidecar listens on `127.0.0.1`
and `::1`, where iptables and ip6tables redirect the pod's two families -- and across a
snapshot swap each of those sockets is handed over on its own (`dup`), never unbound, or bound
afresh.  `ProxyServer` decides *which* listener hands over to which; this module does the
per-address socket work and the one rule of what may be skipped.

The rule: an *additional* address the namespace cannot have -- its family is off
(`EAFNOSUPPORT`), or it is IPv6's loopback or wildcard on a host whose IPv6 is disabled
(`EADDRNOTAVAIL`) -- is skipped with a warning, because no connection of that family can exist
there to be missed.  Every other failure (a port in use, a specific address not configured)
refuses the snapshot, as for the primary address.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

from tulle.proxyconfig.address import hostport, same_address
from tulle.proxyconfig.model import Listener

log = logging.getLogger("tulle.proxy")

IP_TRANSPARENT = 19
"""linux/in.h: lets a socket accept TPROXY'd connections (needs CAP_NET_ADMIN)."""
IPV6_TRANSPARENT = 75
"""linux/in6.h: the same for IPv6."""
FAMILY_OFF = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL})


class BindError(Exception):
    """An address of a listener could not be bound; `str` names listener, address and why."""


def addresses(cfg: Listener) -> list[str]:
    """Every address `cfg` serves, the primary first."""
    return [cfg.address, *cfg.additional_addresses]


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def listening_socket(servers: list[Any], address: str, port: int = 0) -> socket.socket | None:
    """The socket among `servers` (asyncio servers) bound to `address` (and `port`, unless 0),
    if one is."""
    for server in servers:
        for sock in getattr(server, "sockets", ()):
            name = sock.getsockname()
            if same_address(str(name[0]), address) and (not port or int(name[1]) == port):
                return sock  # type: ignore[no-any-return]
    return None


def v6only(cfg: Listener, sock: socket.socket) -> bool:
    """Whether `sock` takes IPv6 only as `cfg` wants it (IPv4 sockets: trivially).  A bound
    socket's `IPV6_V6ONLY` cannot change, so one that differs cannot be handed over."""
    if sock.family != socket.AF_INET6:
        return True
    want = bool(cfg.additional_addresses)  # alone, `::` takes IPv4 too (the system default)
    have = bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return want == have or not same_address(str(sock.getsockname()[0]), "::")


def dup(sock: socket.socket) -> socket.socket:
    """A second descriptor of a listening socket: the new server accepts on it while the old
    one closes its own, so the port is never unbound."""
    new = socket.socket(fileno=os.dup(sock.fileno()))
    new.setblocking(False)
    return new


def bind(cfg: Listener, address: str, port: int, backlog: int) -> socket.socket | None:
    """A fresh listening socket for `cfg` on `address`:`port`.  None: an additional address
    whose family this namespace lacks (logged).  Raises BindError otherwise."""
    sock: socket.socket | None = None
    try:
        sock = socket.socket(family_of(address), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if cfg.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6 and cfg.additional_addresses:
            # each socket serves its own address: `::` must not also claim IPv4's port
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if cfg.mode == "transparent":
            six = sock.family == socket.AF_INET6
            try:
                sock.setsockopt(socket.IPPROTO_IPV6 if six else socket.SOL_IP,
                                IPV6_TRANSPARENT if six else IP_TRANSPARENT, 1)
            except OSError:
                pass  # REDIRECT works without it; TPROXY would need it
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        if sock is not None:
            sock.close()
        if address != cfg.address and family_unavailable(address, exc):
            log.warning("listener %s: not listening on %s: %s (that address family "
                        "is off in this namespace, so none of its connections can arrive)",
                        cfg.name, hostport(address, port), exc.strerror or exc)
            return None
        raise BindError(f"listener {cfg.name}: cannot bind {hostport(address, port)}: "
                        f"{exc.strerror or exc}") from exc
    return sock


def family_unavailable(address: str, exc: OSError) -> bool:
    """Binding `address` failed because its family is off in this namespace: the error says the
    family or address is unavailable, and the address is a loopback or wildcard, which every
    namespace with that family has (so not a mistyped address)."""
    if exc.errno not in FAMILY_OFF:
        return False
    fam = family_of(address)
    if fam == socket.AF_INET6:
        return same_address(address, "::1") or same_address(address, "::")
    return same_address(address, "127.0.0.1") or same_address(address, "0.0.0.0")


__all__ = ["BindError", "addresses", "bind", "dup", "family_of", "family_unavailable",
           "listening_socket", "v6only"]
