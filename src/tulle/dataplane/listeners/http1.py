"""HTTP/1.1 downstream: the asyncio driver around `RequestCodec`, one exchange at a time.

A connection parses requests as they arrive (pipelining allowed) but serves them strictly in
order: the head of `_queue` is the exchange on the wire; later ones wait with their bodies
held and reading paused.  The driver routes each request (`resolve`) and hands it to its
exchange, an `H1Exchange` (`h1exchange.py`): a request stream (`http/stream.py`) that runs the
route's filters, the deadline and the upstream, and writes the response back re-framed for this
client (chunked for HTTP/1.1 when the length is unknown, close-delimited for HTTP/1.0).  This
module is framing, flow control and the connection's life only.

Flow control both ways: when this client's transport is above its high-water mark the upstream
stops being read (`pause_response`), and when the upstream cannot take more request body this
client stops being read (`pause_request_body`).  A 1 GiB body therefore moves through in
buffer-sized steps and the proxy's memory stays flat.

Errors: a bad request gets 400/431/501/505 and the connection closes; a routing miss 404;
upstream failures 502/503/504 (before the response head) or an abort of this connection (after
it).  Each is counted; none affects another connection.

Bookkeeping rules:

* Every exchange that was dispatched is counted in the requests metric exactly once
  (`RequestStream.record`), whichever way it ends: finished, failed after its head, timed out, or
  cut short by the client (flag DC).  Requests parsed behind a broken one and never dispatched
  are not counted; the protocol-error counter says why the connection closed.
* Pause reasons are a set (`pipeline`, `buffer`, `upstream`, `upgrade`, `write`, `error`):
  `write` while this client's transport is above its high-water mark (what it has not read
  yet waits there: no more of its requests are read, answered locally or not); reading
  resumes only when the set is empty, and an exchange that ends takes its `upstream` reason
  with it.  Whether this client's transport is above its high-water mark is remembered and
  applied to every new upstream stream, so pipelined responses cannot pile up behind a slow
  reader either.
* Queued exchanges are started by one loop (`_advance`), never by recursion, so a long pipeline
  of locally answered requests cannot exhaust the stack.
* Closing is a *lingering* close: shut our write side (FIN after the buffered response), then
  read and discard until the client closes or `LINGER_SECONDS` pass.  Closing a socket with
  unread input makes the kernel send RST, which can destroy the error response (400, 408, 431)
  the client has not read yet; this is Envoy's delayed close and nginx's lingering_close.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from tulle.dataplane.http.facts import ConnectionFacts, facts_for
from tulle.dataplane.http.port import StreamConn
from tulle.dataplane.http.stream import client_gone, request_clock
from tulle.dataplane.listeners.context import RoutedConnection, reset
from tulle.dataplane.listeners.h1exchange import H1Exchange
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.protocols.http1 import ProtocolError, RequestCodec, local_response
from tulle.dataplane.turn import CLOSE, HALF_CLOSE, HeldWrites, turn_writes

if TYPE_CHECKING:
    from tulle.dataplane.exchange import Headers, RequestHead, TunnelStream
    from tulle.dataplane.routing.router import Router

LINGER_SECONDS: Final = 1.0


class H1Downstream(StreamConn, asyncio.Protocol, RoutedConnection):
    """A client connection speaking HTTP/1.x."""

    # `RoutedConnection`'s attributes are `StreamConn`'s fields: compiled, this class and its
    # requests read them directly; inherited from the (interpreted) base, every read would be
    # a generic attribute lookup in the instance dict (ADR 0072, ADR 0075).

    def __init__(self, handle: ListenerHandle, peer_ip: str = "", initial: bytes = b"",
                 router: Router | None = None, cluster: str | None = None) -> None:
        self.sni = ""  # (the base's class default, which a compiled field does not see)
        self.header_from = 0.0
        self.refused = ""
        self.init_routing(handle, router, cluster)
        self.loop = asyncio.get_running_loop()
        self.guard = handle.guard
        self.transport: asyncio.Transport | None = None
        self.peer_ip = peer_ip
        self.facts = ConnectionFacts(handle.name, "")
        """Replaced by the transport's facts in `connection_made`."""
        self.codec = RequestCodec(self, self.ctx.max_header_bytes, self.ctx.scheme,
                                  limits=self.ctx.h1_limits)
        self._queue: deque[H1Exchange] = deque()
        self._receiving: H1Exchange | None = None
        self.paused: set[str] = set()
        self.write_paused = False
        self._advancing = False
        self._initial = initial
        self._early_tunnel: list[bytes] | None = None
        self.outq = HeldWrites(turn_writes(self.loop))
        """What this connection writes, held to the end of the loop's turn (ADR 0065)."""
        self.tunnel: TunnelStream | None = None
        self.tunnel_active = 0.0
        """Loop time bytes last moved through the upgrade tunnel (its idle timeout)."""
        self._tunnel_cluster = "-"
        self._eof_in = False
        self._eof_out = False
        self._lingering = False
        self.closing = False
        self.drain_after = False
        """Drained while busy: the responses in flight say `Connection: close` and the
        connection closes after them (`start_drain`)."""
        self.deadline = 0.0
        self.deadline_kind = ""

    def route_by_chain(self, name: str, scheme: bytes = b"", sni: str = "") -> None:
        super().route_by_chain(name, scheme, sni)
        if scheme:
            self.codec.scheme = scheme  # the chain's, not the listener's (x-forwarded-proto)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        ctx = self.ctx
        self.facts = facts = facts_for(transport, ctx.name, ctx.cfg.direction, self.peer_ip)
        facts.sni = self.sni
        key = self.route_key
        if isinstance(key, tuple):  # (a transparent listener's original destination)
            facts.original_dst = key
        if not self.handle.connection_opened(self):
            self.transport = None
            self.closing = True
            reset(transport)
            return
        self.outq.attach(transport)
        self.set_first_header_deadline()
        if self._initial:
            data, self._initial = self._initial, b""
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.ctx.m_bytes_received.value += len(data)
        if self.tunnel is not None:
            self.tunnel_active = self.loop.time()
            self.tunnel.send_data(data)
            return
        if self.closing:
            return
        if self.deadline_kind == "idle":  # a new request head begins
            self.set_deadline("header")
        try:
            self.codec.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        rest = self.codec.upgrade_offset_data
        if rest is not None:
            self.codec.upgrade_offset_data = None
            # Bytes after an upgrade request's head belong to the tunnel, if there will be one.
            if rest:
                self._early_tunnel = [*(self._early_tunnel or ()), rest]
            self.pause_reading("upgrade")

    def eof_received(self) -> bool:
        if self._lingering:
            self.flush()  # our answer (and FIN) may still be held for the turn's end
            return False  # the client has read our answer and closed: done
        if self.tunnel is not None:
            self._eof_in = True
            self.tunnel.send_eof()
            return not self._eof_out  # half-close: the upstream may still answer
        q = self._queue
        if not q or not q[-1].request_done:
            # Nothing in flight, or a request cut short: nothing more can happen here.
            if q:
                q[0].flags = client_gone(q[0].flags)
            return False
        # The client half-closed after whole requests: answer them, then close.
        self._eof_in = True
        for ex in q:
            ex.close_after = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.outq.attach(None)
        self.outq.drop()
        self.closing = True
        self.codec.close()  # breaks codec <-> parser <-> self: nothing waits for the cyclic GC
        self.handle.connection_closed(self)
        for ex in self._queue:
            stream, ex.upstream = ex.upstream, None
            if stream is not None:
                stream.reset()
            if ex.started:
                if ex.status != 101:
                    ex.flags = client_gone(ex.flags)
                ex.record()
        self._queue.clear()
        self._receiving = None
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_response()
            return
        # Answers wait for this client: read no more of its requests either.  Pausing only
        # the upstream left requests the proxy answers itself (404, 429, 503...) read and
        # answered into the transport without bound while the client read nothing (ADR 0103).
        self.pause_reading("write")
        if self._queue:
            stream = self._queue[0].upstream
            if stream is not None:
                stream.pause_response()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_response()
            return
        self.resume_reading("write")
        if self._queue:
            stream = self._queue[0].upstream
            if stream is not None:
                stream.resume_response()

    # -- RequestHandler (from the codec) -------------------------------------------------

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        if self.deadline_kind != "request":  # a pipelined head: the one in flight keeps its own
            self.deadline = 0.0
            self.deadline_kind = ""
        ex = H1Exchange(self, head, not has_body and not head.upgrade, request_clock(),
                        expect_continue)
        # An upgrade closes unless it becomes a tunnel: the parser is done with the connection.
        ex.close_after = not keep_alive or head.upgrade != b""
        ex.chunked = False
        ex.down = self
        self._receiving = ex
        q = self._queue
        q.append(ex)
        if len(q) == 1:
            if self._advancing or self.closing:
                ex.started = False
                self._advance()
            else:  # (what _advance would do, one call less per request)
                ex.started = True
                ex.dispatch()
        else:
            ex.started = False
            self.pause_reading("pipeline")

    def on_request_body(self, data: bytes) -> None:
        ex = self._receiving
        if ex is not None:
            ex.request_data(data)  # held (pipelined, or filters stopped it) until it is open

    def on_request_end(self, trailers: Headers | None) -> None:
        ex = self._receiving
        if ex is None:
            return
        self._receiving = None
        if ex.bodiless:
            return  # the upstream exchange was (or will be) opened already ended
        ex.request_end(trailers)

    # -- exchanges -----------------------------------------------------------------------

    def _advance(self) -> None:
        """Start the exchange at the head of the queue; loop while they finish at once."""
        if self._advancing:
            return  # an outer _advance is running and will see the queue change
        self._advancing = True
        try:
            q = self._queue
            while q and not q[0].started and not self.closing:
                ex = q[0]
                ex.started = True
                if self.refused:
                    # Pipelined behind the response in flight when the listener's admission
                    # refused the connection: never routed, whatever the context says now (a
                    # replaced listener's connection keeps the old one; a later swap may admit
                    # the source again), ADR 0129.  A request that is not pipelined never
                    # comes here: a refused connection closes once nothing is in flight.
                    ex.refuse_unadmitted(self.refused)
                else:
                    ex.dispatch()
        finally:
            self._advancing = False

    def exchange_done(self, ex: H1Exchange) -> None:
        q = self._queue
        if q and q[0] is ex:
            q.popleft()
        ex.upstream = None
        if self.deadline_kind == "request":  # its route timeout; the next one arms its own
            self.deadline = 0.0
            self.deadline_kind = ""
        if self.paused:
            self.resume_reading("upstream")  # the finished upstream can no longer push back
        if ex.close_after or self.closing or (
                (self.drain_after or self.handle.draining) and not q):
            self._close()
            return
        if self.paused and len(q) <= 1:
            self.resume_reading("pipeline")
        if q:
            self._advance()
        elif self.codec.head_started:
            self.set_deadline("header")
        else:
            self.set_deadline("idle")

    def exchange_failed(self, ex: H1Exchange) -> None:
        """The response was cut off after its head went out: the client must see an abort."""
        ex.record()
        self._queue.clear()
        self.abort()

    # -- upgrade tunnel ------------------------------------------------------------------

    def start_tunnel(self, ex: H1Exchange, stream: TunnelStream) -> None:
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        if self.deadline_kind == "request":
            self.deadline = 0.0
            self.deadline_kind = ""
        self.tunnel = stream
        # From here the connection is an opaque relay: it gets the relay idle timeout
        # (`settings.tcp_idle_timeout_ms`, 0 disables), checked by the deadline sweeper.
        idle = self.ctx.settings.tcp_idle_timeout_ms / 1000
        self.tunnel_active = now = self.loop.time()
        self._tunnel_cluster = ex.cluster
        self.deadline = now + idle if idle else 0.0
        self.deadline_kind = "tunnel" if idle else ""
        early = self._early_tunnel
        self._early_tunnel = None
        for chunk in early or ():
            stream.send_data(chunk)
        self.paused.clear()
        if self.write_paused:
            stream.pause_response()
        if self.transport is not None:
            self.transport.resume_reading()

    def tunnel_eof_from_upstream(self) -> None:
        """The upstream half-closed (first call) or is gone (second call)."""
        t = self.transport
        if t is None:
            return
        if self._eof_out or self._eof_in or not t.can_write_eof():
            self._close()  # nothing more can flow either way: close once the buffer drains
            return
        self._eof_out = True
        self.flush()
        t.write_eof()

    # -- transport helpers ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send `data` at the end of this turn with the turn's other writes (ADR 0065), or now
        with what is held when that reaches `turn.WRITE_NOW` bytes."""
        if self.transport is None:
            return
        self.ctx.m_bytes_sent.value += len(data)
        self.outq.write(data)

    def flush(self) -> None:
        """Write what is held now (before closing, half-closing, or aborting)."""
        self.outq.flush()

    def pause_reading(self, why: str) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(why)

    def resume_reading(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.ctx.protocol_error(exc.kind)
        self.closing = True
        self.codec.close()  # dead after raising: free the rejected head now, not at close
        self.pause_reading("error")
        q = self._queue
        while len(q) > 1:  # parsed behind the bad bytes' request, never dispatched
            q.pop()
        first = q[0] if q else None
        self._receiving = None
        if first is not None and first.request_done:
            # The bad bytes followed a good request still in flight: let it finish, then close.
            first.close_after = True
            return
        if first is not None:
            # The bad bytes are inside this request's body: the upstream must not see the rest.
            stream, first.upstream = first.upstream, None
            if stream is not None:
                stream.reset()
            first.flags = "DPE"
            first.resp = None
            if first.head_sent:
                self.exchange_failed(first)
            else:
                first.send_local(exc.status, exc.detail.encode() + b"\n")
            return
        self.write(local_response(exc.status, exc.detail.encode() + b"\n", close=True))
        self._close()

    def on_deadline(self, now: float) -> None:
        kind = self.deadline_kind
        self.deadline = 0.0
        self.deadline_kind = ""
        if kind == "linger":
            if self.transport is not None:
                self.flush()
                self.transport.close()
            return
        if kind == "tunnel":
            self._tunnel_deadline(now)
            return
        if kind == "request":  # the route timeout of the exchange on the wire
            if self._queue:
                self._queue[0].on_timeout()
            return
        if self._queue or self.tunnel is not None:
            return  # a request is in flight: its own timer governs
        if kind == "header" and self.codec.head_started:
            self.ctx.protocol_error("header_timeout")
            self.write(local_response(408, b"request header timeout\n", close=True))
        if kind:
            self._close()

    def _tunnel_deadline(self, now: float) -> None:
        """The upgrade tunnel's idle timeout: close both sides when nothing moved for
        `tcp_idle_timeout_ms` (FIN; the upstream goes with this connection), else look again."""
        if self.tunnel is None:
            return
        due = self.tunnel_active + self.ctx.settings.tcp_idle_timeout_ms / 1000
        if due > now:
            self.deadline = due
            self.deadline_kind = "tunnel"
            return
        ctx = self.ctx
        ctx.metrics.tcp_idle_timeouts.labels(ctx.name, self._tunnel_cluster).value += 1
        self._close()

    def relaying(self) -> bool:
        return self.tunnel is not None

    def ending(self) -> bool:
        return self.closing or (self.drain_after and self.tunnel is None)

    def start_drain(self) -> None:
        """Idle: close now.  Busy: the responses in flight say `Connection: close` and the
        connection closes after the last, whether the whole listener drains or only this
        connection (its way in left the config, `listeners/orphans.py`)."""
        if not self._queue and self.tunnel is None:
            self._close()
        else:
            self.drain_after = True

    def _close(self) -> None:
        """Close after what is written, at the end of the turn with its other writes (ADR
        0069): a lingering close's FIN, or a close when the client already sent its own."""
        self.closing = True
        t = self.transport
        if t is None or self._lingering:
            return
        if self._eof_in or self.tunnel is not None or not t.can_write_eof():
            self.outq.finish(CLOSE)
            return
        self._lingering = True
        self.outq.finish(HALF_CLOSE)
        self.paused.clear()
        t.resume_reading()  # drain (and drop) what the client still sends
        self.deadline_kind = "linger"
        self.deadline = self.loop.time() + LINGER_SECONDS

    def abort(self) -> None:
        self.closing = True
        self.flush()  # what was sent before the failure (a response's head) goes first
        if self.transport is not None:
            self.transport.abort()
