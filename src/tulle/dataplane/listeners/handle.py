"""A bound listener across snapshots: its sockets, the context in force, its connections.

The handle points at the listener's current `ListenerContext`; a swap replaces that pointer
(`tulle.dataplane.runtime.build`), so a connection that started on the old context finishes on
it while new ones start on the new one (decision 3 of DESIGN.md).  It also admits
connections against the listener's and the process's caps (`connection_opened`).

Why a module of its own, compiled with the request path (`tulle.native.COMPILED`): the HTTP
drivers read `handle.ctx` (has the snapshot changed?) and `handle.draining` on every request;
interpreted, each was a generic attribute lookup (ADR 0078).  `context.py` keeps the
connection bases the drivers derive from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.overload import OverloadGuard

if TYPE_CHECKING:
    import asyncio

    from tulle.dataplane.listeners.context import Connection
    from tulle.dataplane.runtime.tls import ServerRef
    from tulle.dataplane.telemetry.flow_records import FlowLogger


@dataclass(eq=False)
class ListenerHandle:
    """A bound listener across snapshots: the socket(s), the current context, its connections.

    It also admits connections: `connection_opened` refuses one beyond the listener's
    `max_connections`, the process's `settings.max_connections` or while the overload guard
    stops accepting (`tulle.dataplane.overload`); the driver then resets it before reading."""

    name: str
    ctx: ListenerContext
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False
    m_active: Any = None
    """The listener's `connections_active` gauge child (None: not counted, tests)."""
    m_total: Any = None
    """The listener's `connections_total` counter child."""
    on_drained: Callable[[], None] | None = None
    guard: OverloadGuard = field(default_factory=OverloadGuard)
    tls_ref: ServerRef | None = None
    """The shared server TLS entry its sockets accept with (`.ctx`, read per accept)."""
    _handover: bool = False
    flows: dict[Connection, FlowLogger] = field(default_factory=dict)
    """The flow log that follows each connection (the one in force when it opened)."""

    def connection_opened(self, conn: Connection) -> bool:
        """Register a new connection; False when it must be refused (it is then not
        registered, and counted in the overflow metric)."""
        if self._handover:
            self._handover = False  # the same client connection, passed to its driver
        else:
            g = self.guard
            cap = self.ctx.max_connections
            if g.active >= g.accept_limit or (cap and len(self.connections) >= cap):
                self.count_refusal()
                return False
            g.active += 1
            if g.active >= g.watch_at:
                g.estimate()
        self.connections.add(conn)
        self.m_active.value += 1
        self.m_total.value += 1
        flow = self.ctx.flow_log
        if flow is not None and flow.connection_opened(conn):  # an HTTP connection's flow
            self.flows[conn] = flow
        return True

    def follow(self, conn: Connection) -> None:
        """Have the flow log in force follow `conn` when it is an HTTP connection (as
        `connection_opened` does, inlined there: once per connection of every listener)."""
        flow = self.ctx.flow_log
        if flow is not None and flow.connection_opened(conn):
            self.flows[conn] = flow

    def unfollow(self, conn: Connection) -> None:
        """`conn` is not (or not yet) an HTTP connection's driver: no flow of it, no record
        (an `auto` listener's HTTP/1-first driver until its first bytes say HTTP/1)."""
        flow = self.flows.pop(conn, None)
        if flow is not None:
            flow.forget(conn)

    def count_refusal(self) -> None:
        cap = self.ctx.max_connections
        reason = ("listener_limit" if cap and len(self.connections) >= cap
                  else self.guard.refusal())
        self.ctx.metrics.connections_overflow.labels(self.name, reason).value += 1

    def full(self) -> bool:
        """Whether a connection accepted now would be refused: the protocol factory then builds
        a `Refused` stand-in instead of a driver.  `connection_opened` decides exactly."""
        g = self.guard
        cap = self.ctx.max_connections
        return g.active >= g.accept_limit or bool(cap and len(self.connections) >= cap)

    def hand_over(self, conn: Connection) -> None:
        """Unregister `conn` whose transport goes to another driver at once (detection): that
        driver's `connection_opened` is the same client connection, admitted already.  The
        accepted total is undone here because the next driver counts it again."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.m_active.value -= 1
            self.m_total.value -= 1
            self._handover = True
            self.unfollow(conn)

    def connection_closed(self, conn: Connection) -> None:
        if conn in self.connections:
            flows = self.flows
            if flows:
                flow = flows.pop(conn, None)
                if flow is not None:
                    flow.connection_closed(conn)
            self.connections.discard(conn)
            self.guard.active -= 1
            self.m_active.value -= 1
            if self.draining and not self.connections and self.on_drained is not None:
                self.on_drained()
