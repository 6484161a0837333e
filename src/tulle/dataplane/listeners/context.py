"""A listener's connections across snapshots: the bases the drivers derive from.

The listener's `ListenerHandle` (`handle.py`) points at the current `ListenerContext`
(`listener_context.py`: what a request looks up); both are compiled with the request path
(ADR 0078).  A swap replaces that pointer, so a connection (and an exchange) that started on
the old context can finish on it (decision 3 of DESIGN.md) while new ones start on the new
one.  A swap that changes nothing the context depends on keeps it
(`tulle.dataplane.runtime.build`): its connections then see no swap at all.  Connections keep
a routing key, never routing objects (`RoutedConnection`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING

from tulle.dataplane.listeners.admission import asked, refusal
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import DestinationRule, ListenerContext
from tulle.dataplane.routing.router import Router
from tulle.proxyconfig.model import RouteTable

if TYPE_CHECKING:
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.listeners.chains import ChainRule

NO_ROUTE = Router(RouteTable(name="no-route"), 0)
"""The router of a connection whose routing key no rule matches any more: every request 404."""


def reset(transport: asyncio.Transport) -> None:
    """Close a connection at once with RST (SO_LINGER 0): nothing lingers in TIME_WAIT, and the
    client learns immediately that it was refused."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()


_LINGER_RESET = struct.pack("ii", 1, 0)


class Refused(asyncio.Protocol):
    """What a connection accepted beyond a cap gets instead of a driver: counted, then reset."""

    __slots__ = ("handle",)

    def __init__(self, handle: ListenerHandle) -> None:
        self.handle = handle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handle.count_refusal()
        reset(transport)  # type: ignore[arg-type]


class Connection:
    """What every downstream connection offers the listener's housekeeping."""

    deadline: float = 0.0
    """Loop time at which `on_deadline` runs (header timeout, idle timeout); 0 for none."""

    def on_deadline(self, now: float) -> None:
        raise NotImplementedError

    def start_drain(self) -> None:
        """Stop taking requests: close now if idle, else after the in-flight one."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def admission_facts(self) -> tuple[str, tuple[str, int] | None] | None:
        """What the accept step admitted this connection by: the client's address and, on a
        transparent listener, its original destination (`listeners/admission.py`, asked at a
        swap).  None: nothing to ask (it is ending, or nothing it opened with is known)."""
        return None

    def not_admitted(self, reason: str) -> None:
        """The config now in force would refuse this connection at accept (`reason`, a
        `listeners/admission.py` kind): end it as that refusal ends its kind."""
        self.abort()


class RoutedConnection(Connection):
    """A downstream HTTP connection: it routes each request by the snapshot in force.

    A connection keeps a routing *key*, never routing objects of a snapshot (DESIGN.md section
    4): its listener (the handle) and, when a transparent listener's per-destination rule chose
    its routing, its original destination (`route_key`).  `router` / `cluster` are what the key
    resolves to in the context the connection last saw; when a new context is in force,
    `follow_snapshot` (called before each request is routed) resolves the key again against
    it, so a kept-alive connection follows the config exactly as a new connection to the same
    destination would.  Requests in flight finish on the decision they were routed with
    (decision 3 of DESIGN.md).

    A destination that no rule of the new context routes any more (or a filter chain that is
    gone) gets 404 (no route, flag NR) on this connection, and the connection is drained
    (HTTP/1: `Connection: close` after the response; HTTP/2: GOAWAY), so the client reconnects
    and meets the new config's decision for it.  The swap itself drains such connections
    already, the idle ones too (`listeners/orphans.py`).
    """

    handle: ListenerHandle
    ctx: ListenerContext
    router: Router | None
    cluster: str
    loop: asyncio.AbstractEventLoop
    route_key: tuple[str, int] | str | None = None
    """The original destination whose rule routes this connection, or the name of the filter
    chain that does (`route_by_chain`); None: the listener's own `route_table` / `cluster`
    do."""
    deadline_kind: str = ""
    sni: str = ""
    """The ClientHello's server name, when a filter chain chose this connection by it."""
    facts: ConnectionFacts
    refused: str
    """Why the listener's admission refused this connection since it was admitted, else ""
    (`http.port.StreamConn.refused`)."""

    def init_routing(self, handle: ListenerHandle, router: Router | None = None,
                     cluster: str | None = None) -> None:
        if router is not None or cluster is not None:
            raise TypeError("a connection routes by key: use route_by_destination, never "
                            "routing objects of one snapshot")
        self.handle = handle
        self.ctx = ctx = handle.ctx
        self.route_key = None
        self.router = ctx.router
        self.cluster = ctx.cluster

    def route_by_destination(self, destination: tuple[str, int]) -> None:
        """Route this connection by the destination rule matching `destination` (a transparent
        listener's original destination), in this and every later snapshot."""
        self.route_key = destination
        self._resolve(self.handle.ctx)

    def route_by_chain(self, name: str, scheme: bytes = b"", sni: str = "") -> None:
        """Route this connection by the listener's filter chain called `name`, in this and
        every later snapshot (`listeners.chains`).  `scheme`: the chain's (`https` when it
        terminates TLS), which an HTTP/1 driver gives its requests instead of the listener's;
        `sni`: the server name of the ClientHello the chain was chosen by (`facts.sni`)."""
        self.route_key = name
        self.sni = sni
        self._resolve(self.handle.ctx)

    def follow_snapshot(self) -> str:
        """Call before routing a request: picks up a swapped snapshot, if any.  Returns why
        the snapshot now in force would refuse this connection at accept (its source, its
        destination: `listeners/admission.py`), else "": the caller then answers the request
        itself, and the connection is drained (ADR 0127)."""
        ctx = self.handle.ctx
        if ctx is self.ctx:
            return ""
        why = refusal(ctx, asked(self.ctx, ctx), *self._admitted_by())
        if why:
            self.refused = why
            self.ctx = ctx
            self.router = NO_ROUTE
            self.cluster = ""
            self.start_drain()
            return why
        if not self._resolve(ctx):
            self.start_drain()
        return ""

    def admission_facts(self) -> tuple[str, tuple[str, int] | None] | None:
        if self.ending():  # (closing, or drained already: refused by an earlier swap too)
            return None
        return self._admitted_by()

    def _admitted_by(self) -> tuple[str, tuple[str, int] | None]:
        peer = self.facts.peer
        key = self.route_key
        return (peer[0] if peer is not None else "", key if isinstance(key, tuple) else None)

    def ending(self) -> bool:
        """Whether the connection takes no new request any more (closing, or drained: its
        HTTP/1 response in flight says `Connection: close`, its HTTP/2 GOAWAY went out)."""
        return False

    def not_admitted(self, reason: str) -> None:
        """Refused by the config now in force (ADR 0127): idle, closed now; busy, the
        response in flight says `Connection: close` (HTTP/2: GOAWAY) and the connection closes
        after it; a request routed after the swap is answered 403; an upgraded tunnel is cut.
        Counted in `tulle_proxy_http_config_closes_total{listener,reason}`.

        The refusal is kept (`refused`): what the connection still carries is answered by it,
        not by the snapshot a later request would see -- an HTTP/1 request pipelined behind
        the response in flight is answered 403 even when it is dispatched under the
        listener's old context (a replaced listener's connections keep it) or after a later
        swap that admits the source again, and an upgrade in flight gets no tunnel when its
        101 arrives (ADR 0129)."""
        self.refused = reason
        handle = self.handle
        handle.ctx.metrics.http_config_closes.labels(handle.name, reason).value += 1
        if self.relaying():  # no request boundary to refuse at: cut, as a relay is
            self.abort()
        else:
            self.start_drain()

    def relaying(self) -> bool:
        """Whether this connection now carries an opaque stream (an upgraded HTTP/1
        connection's tunnel): no next request will come to refuse."""
        return False

    def _resolve(self, ctx: ListenerContext) -> bool:
        """Point `router` / `cluster` at what the routing key means in `ctx`; False when it
        means nothing any more (no rule for the destination)."""
        self.ctx = ctx
        key = self.route_key
        if key is None:
            self.router = ctx.router
            self.cluster = ctx.cluster
            return True
        found = self._lookup(ctx)
        if found is None:
            self.router = NO_ROUTE
            self.cluster = ""
            return False
        self.router, self.cluster = found
        return True

    def routable(self, ctx: ListenerContext) -> bool:
        """The routing key still means something in `ctx` (its filter chain or destination
        rule is there); asked at a swap (`listeners/orphans.py`), nothing changes."""
        return self.route_key is None or self._lookup(ctx) is not None

    def _lookup(self, ctx: ListenerContext) -> tuple[Router | None, str] | None:
        key = self.route_key
        assert key is not None
        rule: DestinationRule | ChainRule | None = (
            ctx.chains_by_name.get(key) if isinstance(key, str) else ctx.destination_for(*key))
        if isinstance(rule, DestinationRule) and rule.refuse:
            return None  # (refused: never to the listener's own cluster)
        cluster = (rule.cluster or ctx.cluster) if rule is not None else ""
        if rule is None or (rule.router is None and not cluster):
            return None
        return rule.router, cluster
