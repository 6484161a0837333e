"""What is known about a downstream connection, gathered once when it is accepted.

Every request on a connection shares these facts (Envoy's `StreamInfo` downstream address
provider): filters and observers read them from the request stream (`stream.facts`) instead of
each asking the transport again.  They are built once per connection by the driver
(`facts_for`), never per request, and they hold plain values, so a request that never looks at
them pays nothing.

`peer_identity` is the peer's verified identity: the SPIFFE ID of the client certificate a
mesh mTLS listener verified (`security.spiffe`, ADR 0030); empty on plaintext or without a
verified SVID, and a filter must then treat the peer as unauthenticated.  `sni` is filled
by the accept side that sees the ClientHello (the server side of `ssl` does not report it
after the handshake).

An IPv4 client of a dual-stack socket is reported by the kernel as `::ffff:10.0.0.5`; its
facts carry `10.0.0.5` (`peer_host`), as Envoy's `ipv4_compat` does at the connection: every
reader -- `x-forwarded-for`, a rate limit's per-client key, the access log, a tap -- sees one
client as one address whichever socket it came in on (ADR 0093; ranges were already compared
as IPv4, ADR 0090).
"""

from __future__ import annotations

import asyncio

from tulle.dataplane.security.spiffe import spiffe_id
from tulle.proxyconfig.address import peer_host


class ConnectionFacts:
    """One downstream connection, as the requests on it see it."""

    __slots__ = ("alpn", "client_cert", "direction", "listener", "log_fields", "original_dst",
                 "peer", "peer_identity", "peer_ip", "sni", "tls")

    def __init__(self, listener: str, direction: str, peer: tuple[str, int] | None = None,
                 *, tls: bool = False, alpn: str = "", sni: str = "") -> None:
        self.listener = listener
        self.direction = direction
        """`outbound` (the local workload calls out) or `inbound` (traffic to it)."""
        self.peer = peer
        """The client's (address, port), or None when the transport does not say."""
        self.peer_ip = peer[0].encode() if peer is not None else b""
        """The client address as x-forwarded-for carries it."""
        self.tls = tls
        self.alpn = alpn
        self.sni = sni
        self.peer_identity = ""
        """The verified identity of the peer (SPIFFE ID); empty: not authenticated."""
        self.client_cert = b""
        """`x-forwarded-client-cert`'s value for the verified peer (`URI=<SPIFFE ID>`, ADR
        0096), made once per connection; empty: not authenticated."""
        self.original_dst: tuple[str, int] | None = None
        """Where a transparently redirected connection was going (its routing key)."""
        self.log_fields: object = None
        """The access log's view of these facts, made on the connection's first logged
        request and kept for the next (`telemetry/access_log.ConnectionFields`): the facts
        are complete before a request is read and do not change after."""


def facts_for(transport: asyncio.BaseTransport, listener: str, direction: str,
              peer_ip: str = "") -> ConnectionFacts:
    """Read the facts of a freshly accepted connection from its transport (once)."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple):
        peer = None  # a Unix socket, or nothing at all
    address: tuple[str, int] | None = None
    if peer_ip:
        address = (peer_host(peer_ip), int(peer[1]) if peer else 0)
    elif peer:
        address = (peer_host(str(peer[0])), int(peer[1]))
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return ConnectionFacts(listener, direction, address)
    facts = ConnectionFacts(listener, direction, address, tls=True,
                            alpn=ssl_object.selected_alpn_protocol() or "")
    identity = facts.peer_identity = spiffe_id(ssl_object)
    if identity:
        facts.client_cert = b"URI=" + identity.encode()
    return facts
