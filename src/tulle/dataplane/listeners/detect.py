"""The first moments of a connection on an `auto`, `tcp` or transparent listener.

`DetectDownstream` decides what a freshly accepted connection is and hands its transport to the
driver that serves it, then steps aside:

1. **Where it was going.**  On a transparent listener, the original destination of the
   iptables-redirected connection (`tulle.net.origdst`).  A connection whose original
   destination is the listener's own address was not redirected (a client dialled the proxy
   port directly, or a rule sends the proxy's own traffic back to it): that is a loop, refused
   and counted as protocol error `loop`.  The destination picks a `DestinationRule`; with none,
   `passthrough` relays to the original destination as TCP, otherwise the connection is
   refused (`no_destination`, and a line in the log at a bounded rate: `refusals`).  A rule
   with `refuse` is refused whatever `passthrough` says (`destination_refused`, logged the
   same way: a meshed pod's port it does not declare, ADR 0114).  On an
   explicit listener the destination is the address the client dialled.
2. **What it speaks.**  A `tcp` protocol, a destination port in `opaque_ports` or in
   `DEFAULT_OPAQUE_PORTS`, or a rule that names no route table and no cluster skips sniffing:
   the relay connects at once, so a server-first protocol's greeting flows.  Otherwise the first
   bytes go through the sans-I/O sniffer (`protocols.detect`) until it decides.  Only what is
   clearly not HTTP is relayed as TCP.  A client that sends nothing for `detect_timeout_ms` is
   relayed as TCP when there is a TCP target (server-first protocols on ports nobody declared)
   and closed otherwise; one that sent a prefix and then stopped (or half-closed) goes to the
   driver of what the prefix was becoming (`protocols.detect.undecided`), so an HTTP-looking
   trickle meets the HTTP header timeout, not an unbounded relay.  TLS is relayed as opaque
   TCP for now.  The timeout is kept by the listener's `SilenceWatch`: one timer for all its
   undecided connections, not one per connection (ADR 0071).
3. **Hand-over.**  HTTP/1 and HTTP/2 go to their drivers through `handover` with the bytes
   already read; TCP goes to `network.relay` (the listener's network filters, then the TCP
   proxy, which has an idle timeout).  An explicit `auto` listener's connections start as
   `listeners.h1sniff.H1SniffDownstream` instead, which stays the HTTP/1 driver when the first
   bytes say HTTP/1 and gives every other case to a `DetectDownstream` (`take_over`), so the
   decisions below are made here for both (ADR 0073).  Each outcome of an
   `auto` listener is counted in `tulle_proxy_protocol_detected_total{listener,protocol}`
   (`http1`, `http2`, `tls`, `tcp`, `opaque` when sniffing was skipped by port, `timeout` when
   the client stayed silent, `partial` when it stopped or half-closed mid-prefix).
   The HTTP/2 driver, and h2 with it, is imported at the first h2 preface: a proxy that never
   sees HTTP/2 never loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from mypy_extensions import mypyc_attr

from tulle.dataplane.listeners.admission import peer_address
from tulle.dataplane.listeners.context import Connection, reset
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.listeners.refusals import REFUSALS
from tulle.dataplane.network.relay import Target, relay
from tulle.dataplane.protocols.detect import MAX_SNIFF_BYTES, detect_next, undecided
from tulle.net.origdst import original_destination

log = logging.getLogger("tulle.proxy")

if TYPE_CHECKING:
    from tulle.dataplane.listeners.http2 import H2Downstream
    from tulle.dataplane.listeners.listener_context import DestinationRule
    from tulle.dataplane.telemetry.series import CounterChild



_H2_MISSING: list[str] = []
"""Why the HTTP/2 driver cannot be imported, once known (logged once; a test sets it to play
a build without the engine)."""


def _h2_driver() -> type[H2Downstream] | None:
    """The HTTP/2 driver, imported on first need; None when its engine is not built (then an
    HTTP/2 connection is refused, `http2_unavailable`, and the reason logged once: relayed
    as TCP, its bytes went to an HTTP/1 cluster -- or, transparent, the application --
    without the route's filters, attack audit, ADR 0094)."""
    if _H2_MISSING:
        return None
    try:
        from tulle.dataplane.listeners.http2 import H2Downstream
    except ImportError as exc:  # pragma: no cover - a build without the HTTP/2 engine
        if not _H2_MISSING:
            _H2_MISSING.append(str(exc))
            log.error("HTTP/2 connections are refused: %s", exc)
        return None
    return H2Downstream


def handover(transport: asyncio.Transport, protocol: asyncio.Protocol, initial: bytes) -> None:
    """Give a live transport to another protocol object, with the bytes already read from it."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if initial:
        protocol.data_received(initial)


@mypyc_attr(allow_interpreted_subclasses=True)  # listeners.chain_accept.ChainAccept (ADR 0052)
class Deciding(asyncio.Protocol, Connection):
    """A connection whose driver is not chosen yet: the life cycle `DetectDownstream` and
    `listeners.chain_accept.ChainAccept` share (opening, the original destination, hand-over,
    refusal, close).  Subclasses decide; `_finish` is where they drop what deciding held."""

    def __init__(self, handle: ListenerHandle) -> None:
        self.handle = handle
        self.ctx: ListenerContext = handle.ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def _opened(self, t: asyncio.Transport) -> bool:
        """`connection_made`'s first step: counted in, or (over the listener's limit, or from a
        source the listener does not take: a node agent's pod listener lends that pod's
        identity to no one else, ADR 0098) reset."""
        ctx = self.ctx
        if ctx.sources and not ctx.source_allowed(t.get_extra_info("peername")):
            ctx.protocol_error("source_refused")
            self._done = True
            reset(t)
            return False
        self.transport = t
        if self.handle.connection_opened(self):
            return True
        self._done = True
        self.transport = None
        reset(t)
        return False

    def _original_destination(self, t: asyncio.Transport,
                              local: object) -> tuple[str, int] | None:
        """Where a transparent connection was going; None (refused) when unknown or a loop.
        `local`: the socket's own address as the transport gives it (an IPv6 one is a
        4-tuple: host, port, flow info, scope)."""
        sock = t.get_extra_info("socket")
        dst = original_destination(sock) if sock is not None else None
        if dst is None:
            self._refuse("no_original_destination")
            return None
        if isinstance(local, tuple) and dst == (str(local[0]), int(local[1])):
            self._refuse("loop")
            return None
        return dst

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        self._finish()
        self.transport = None
        self.handle.connection_closed(self)

    def _eof_to_successor(self, t: asyncio.Transport | None) -> bool:
        """After a decision on EOF: the kernel reports the EOF again to whoever reads the
        socket next, so the successor (if one took the transport) hears it now."""
        successor = t.get_protocol() if t is not None else None
        if successor is None or successor is self:
            return False
        return bool(successor.eof_received())  # type: ignore[attr-defined]

    def _pass(self, start: Callable[[asyncio.Transport, bytes], object]) -> None:
        t = self.transport
        if t is None:
            return
        initial = self.buffer
        self.buffer = b""
        self._finish()
        self.transport = None
        self.handle.hand_over(self)
        start(t, initial)

    def _refuse(self, kind: str) -> None:
        self.ctx.protocol_error(kind)
        self.abort()

    def admission_facts(self) -> tuple[str, tuple[str, int] | None] | None:
        t = self.transport
        if t is None or self._done:
            return None
        return peer_address(t), None

    def not_admitted(self, reason: str) -> None:
        """Still in its accept step when a swap changed the listener's admission (ADR 0127):
        refused as at accept, counted `tulle_proxy_protocol_errors_total{kind=reason}`."""
        self._refuse(reason)

    def _count(self, protocol: str) -> None:
        self.ctx.metrics.protocol_detected.labels(self.ctx.name, protocol).value += 1

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- Connection ----------------------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        pass

    def start_drain(self) -> None:
        """Nothing is in flight yet: an orderly close (a FIN, as an idle HTTP/1 connection
        gets), never a reset, so a client that connected ahead of its first request opens a
        new connection instead of seeing an error."""
        if self.transport is not None and not self._done:
            self._close_now(reset=False)

    def abort(self) -> None:
        self._close_now(reset=True)

    def _close_now(self, reset: bool) -> None:
        """Finish, count the connection closed, then close its transport (reset or FIN)."""
        t = self.transport
        self._finish()
        self.transport = None
        self.handle.connection_closed(self)
        if t is not None:
            if reset:
                t.abort()
            else:
                t.close()


class Sniffing(Protocol):
    """What `SilenceWatch` keeps of a connection still sniffing: `DetectDownstream`, and
    `listeners.h1sniff.H1SniffDownstream` (an `auto` listener's HTTP/1-first driver)."""

    watched: bool
    """In the watch's queue, not yet decided."""
    detect_at: float
    """Loop time its detection times out (while `watched`)."""
    _timer: asyncio.TimerHandle | None
    """A timer of its own instead (a deadline earlier than the queue's tail)."""

    def _on_timeout(self) -> None: ...


class SilenceWatch:
    """One listener's detection deadlines: one timer for all its undecided connections.

    Every connection on a listener waits the same `detect_timeout_ms`, so deadlines arrive in
    the order connections do: a FIFO whose head is the next to expire, and one loop timer armed
    for that head (same precision as a timer per connection, ADR 0071).  A connection that
    decides leaves through `forget`: it is marked (`watched = False`), and dead entries at the
    queue's tail are dropped at once (the newest connection is usually the one whose first
    bytes just arrived, ADR 0073), so a connection that decided and closed is not kept alive by
    the queue.  Others are dropped by the timer, or by a compaction when dead entries outnumber
    live ones two to one: the queue holds at most ``2 * live + 64`` entries whatever the
    connection rate.  A deadline earlier than the tail's (the timeout was lowered by a reload)
    gets a timer of its own, so order never costs precision; one earlier than the timer's
    when `forget` emptied the queue under it re-arms the timer.

    It also keeps the listener's `protocol_detected` children, looked up once per protocol."""

    __slots__ = ("_counted", "_ctx", "due", "live", "queue", "timer")

    def __init__(self) -> None:
        self.queue: deque[Sniffing] = deque()
        self.live = 0
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0
        """Loop time `timer` fires (while armed)."""
        self._ctx: ListenerContext | None = None
        self._counted: dict[str, CounterChild] = {}

    def forget(self, conn: Sniffing) -> None:
        """`conn` decided (or closed): it times out no more.  O(1) amortised: each entry is
        dropped once, here from the tail or later from the head or by a compaction."""
        if conn.watched:
            conn.watched = False
            self.live -= 1
            q = self.queue
            while q and not q[-1].watched:
                q.pop()
        elif conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None

    def add(self, conn: Sniffing, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Time `conn` out after `timeout` seconds unless it decides first."""
        at = loop.time() + timeout
        q = self.queue
        if q and at < q[-1].detect_at:
            conn._timer = loop.call_at(at, conn._on_timeout)
            return
        conn.detect_at = at
        conn.watched = True
        q.append(conn)
        self.live += 1
        timer = self.timer
        if timer is None or at < self.due:  # (armed for entries `forget` dropped, later)
            if timer is not None:
                timer.cancel()
            self.due = at
            self.timer = loop.call_at(at, self._fire, loop)
        elif len(q) > 64 and len(q) > 2 * self.live:
            self.queue = deque([c for c in q if c.watched])

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        q = self.queue
        now = loop.time() + 0.001  # the loop clock's resolution: due is due
        while q:
            conn = q[0]
            if conn.watched:
                if conn.detect_at > now:
                    break
                conn.watched = False
                self.live -= 1
                q.popleft()
                try:
                    conn._on_timeout()
                except Exception as exc:  # one connection's failure never stops the others'
                    loop.call_exception_handler({"message": "detection timeout failed",
                                                 "exception": exc, "protocol": conn})
            else:
                q.popleft()
        if q:
            self.due = q[0].detect_at
            self.timer = loop.call_at(self.due, self._fire, loop)

    def counter(self, ctx: ListenerContext, protocol: str) -> CounterChild:
        """The `protocol_detected{listener, protocol}` child (the context may be replaced)."""
        if ctx is not self._ctx:
            self._ctx = ctx
            self._counted = {}
        child = self._counted.get(protocol)
        if child is None:
            child = self._counted[protocol] = ctx.metrics.protocol_detected.labels(
                ctx.name, protocol)
        return child


class DetectDownstream(Deciding):
    """A connection whose driver is not chosen yet."""

    def __init__(self, handle: ListenerHandle, watch: SilenceWatch | None = None) -> None:
        super().__init__(handle)
        self.destination: tuple[str, int] | None = None
        self.rule: DestinationRule | None = None
        self.watch = watch if watch is not None else SilenceWatch()
        self.watched = False
        """In `watch`'s queue, not yet decided."""
        self.detect_at = 0.0
        self.first_at = 0.0
        """Loop time its first byte arrived (an HTTP driver's first header deadline counts
        from it)."""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        if not self._opened(t):
            return
        ctx = self.ctx
        cfg = ctx.cfg
        local = t.get_extra_info("sockname")
        protocol: str = cfg.protocol
        if cfg.mode == "transparent":
            dst = self._original_destination(t, local)
            if dst is None:
                return
            self.destination = dst
            rule = self.rule = ctx.destination_for(*dst)
            if rule is None:
                if not cfg.passthrough:
                    REFUSALS.no_destination(ctx.name, dst[0], dst[1], self.loop.time())
                    self._refuse("no_destination")
                    return
                self._relay(Target.passthrough(*dst))  # unmatched: opaque, as it came
                return
            if rule.refuse:  # a meshed pod's undeclared port, never passed through
                REFUSALS.refused(ctx.name, dst[0], dst[1], self.loop.time())
                self._refuse("destination_refused")
                return
            if rule.router is None and not rule.cluster:
                self._relay(Target.passthrough(*dst))  # a rule that only declares TCP
                return
            protocol = rule.protocol
        elif local is not None:
            self.destination = (str(local[0]), int(local[1]))
        port = self.destination[1] if self.destination is not None else 0
        if protocol == "auto" and port in ctx.opaque_ports:
            self._count("opaque")
            protocol = "tcp"
        if protocol == "auto":
            self.watch.add(self, self.loop, cfg.detect_timeout_ms / 1000)
        else:
            self._decide(protocol)

    def take_over(self, t: asyncio.Transport, sniffer: Connection, buffered: bytes) -> None:
        """Stand in for `sniffer`, an `auto` listener's HTTP/1-first driver
        (`listeners.h1sniff`), whose connection is not HTTP/1 after all, or is still
        undecided at its detection deadline or an EOF: the transport, its admission (the same
        client connection, not counted twice) and the `buffered` bytes come here.  The
        caller then replays the event on this object (`data_received`, `_on_timeout`,
        `eof_received`), so every decision but the HTTP/1 one is made here, in one place."""
        handle = self.handle
        handle.hand_over(sniffer)
        self.transport = t
        self.buffer = buffered
        handle.connection_opened(self)  # (after hand_over: admitted, whatever the counts)
        t.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        before = self.buffer
        if not before and not self.first_at:
            self.first_at = self.loop.time()
        buf = self.buffer = before + data if before else data
        protocol = detect_next(buf, len(before)).protocol  # (no rescan of `before`)
        if protocol == "need_more":
            if len(buf) < MAX_SNIFF_BYTES:
                return
            protocol = undecided(buf)  # a token or empty lines running on: HTTP/1 answers it
        self._count(protocol)
        self._decide(protocol)

    def eof_received(self) -> bool:
        if self._done:
            return False
        if not self.buffer:
            return False  # gone before saying anything: nothing to relay
        # A half-closed client that sent a prefix of something: the driver of what it was on
        # its way to gets it (an HTTP-looking prefix is answered by the HTTP stack, never
        # relayed).  The kernel reports the EOF again to whoever reads the socket next.
        t = self.transport
        self._count("partial")
        self._decide(undecided(self.buffer))
        return self._eof_to_successor(t)

    def _finish(self) -> None:
        self.watch.forget(self)
        super()._finish()

    def admission_facts(self) -> tuple[str, tuple[str, int] | None] | None:
        t = self.transport
        if t is None or self._done:
            return None
        return peer_address(t), self.destination

    def _count(self, protocol: str) -> None:
        self.watch.counter(self.ctx, protocol).value += 1

    # -- decisions -----------------------------------------------------------------------

    def _on_timeout(self) -> None:
        """`detect_timeout_ms` passed without a decision.

        * Nothing sent: maybe a server-first protocol on a port nobody declared.  With a TCP
          target (a cluster, or a transparent connection's destination) it is relayed, so the
          greeting flows; the relay's idle timeout bounds it.  Without one (a listener that
          only routes HTTP) the connection is closed.
        * A prefix (a trickling client): it goes to the driver of what it was on its way to.
          An HTTP-looking prefix meets the HTTP driver's header timeout (408) and parser; it
          never becomes an opaque relay holding an application connection.
        """
        self._timer = None
        if self._done:
            return
        if self.buffer:
            self._count("partial")
            self._decide(undecided(self.buffer))
            return
        self._count("timeout")
        if self._tcp_target_name():
            self._decide("tcp")
        else:
            self.abort()

    def _tcp_target_name(self) -> str:
        rule = self.rule
        return (rule.cluster if rule is not None else "") or self.ctx.cluster

    def _decide(self, protocol: str) -> None:
        """Hand the connection to the driver for `protocol`."""
        rule = self.rule
        ctx = self.ctx
        h2_driver = _h2_driver() if protocol == "http2" else None
        if protocol == "http2" and h2_driver is None:
            self._refuse("http2_unavailable")
            return
        if protocol in ("http1", "http2"):
            proto: H1Downstream | H2Downstream
            driver = h2_driver if h2_driver is not None else H1Downstream
            proto = driver(self.handle)
            proto.header_from = self.first_at
            if rule is not None and self.destination is not None:
                # A routing key, resolved against the snapshot in force at each request.
                proto.route_by_destination(self.destination)
            self._pass(lambda t, initial: handover(t, proto, initial))
            return
        # tcp, tls (relayed opaque for now), or an undecidable prefix: to the rule's (or the
        # listener's) cluster.  Never to a matched rule's original destination: a rule that
        # routes HTTP and names no cluster is the only way in to that port (its route's
        # filters, authorization first), and a silent client, a leading space or a
        # ClientHello relayed there went around them (attack audit, ADR 0094).  A rule that
        # declares TCP alone was relayed at `connection_made`.
        name = self._tcp_target_name()
        cluster = ctx.clusters.get(name) if name else None
        if cluster is None:
            self._refuse("no_cluster")
            return
        self._relay(Target(name, cluster))

    def _relay(self, target: Target) -> None:
        dst = self.destination if self.ctx.cfg.mode == "transparent" else None
        self._pass(lambda t, initial: relay(self.handle, t, initial, target, dst))
