"""HTTP/1.1 downstream: the asyncio driver around `RequestCodec`, one exchange at a time.

A connection parses requests as they arrive (pipelining allowed) but serves them strictly in
order: the head of `_queue` is the exchange on the wire; later ones wait with their bodies
buffered and reading paused.  Each exchange routes its request, opens an upstream stream and
relays the response back, re-framing it for this client (chunked for HTTP/1.1 when the length is
unknown, close-delimited for HTTP/1.0).

Flow control both ways: when this client's transport is above its high-water mark the upstream
stops being read (`pause_response`), and when the upstream cannot take more request body this
client stops being read (`pause_request_body`).  A 1 GiB body therefore moves through in
buffer-sized steps and the proxy's memory stays flat.

Errors: a bad request gets 400/431/501/505 and the connection closes; a routing miss 404;
upstream failures 502/503/504 (before the response head) or an abort of this connection (after
it).  Each is counted; none affects another connection.

Bookkeeping rules:

* Every exchange that was dispatched is counted in the requests metric exactly once
  (`H1Exchange.record`), whichever way it ends: finished, failed after its head, timed out, or
  cut short by the client (flag DC).  Requests parsed behind a broken one and never dispatched
  are not counted; the protocol-error counter says why the connection closed.
* Pause reasons are a set (`pipeline`, `buffer`, `upstream`, `upgrade`, `error`); reading
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
from typing import TYPE_CHECKING, cast

from tulle.dataplane.exchange import (
    Headers,
    RequestHead,
    ResponseHead,
    TunnelStream,
    UpstreamError,
    UpstreamStream,
)
from tulle.dataplane.http.chain import ChainRun
from tulle.dataplane.listeners.context import (
    ListenerHandle,
    RequestStats,
    RoutedConnection,
    reset,
)
from tulle.dataplane.listeners.dispatch import Decision, add_forwarding_headers, resolve
from tulle.dataplane.protocols.http1 import (
    ProtocolError,
    RequestCodec,
    encode_chunk,
    encode_last_chunk,
    local_response,
    serialize_response_head,
)

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import Router

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 1.0
_KEEP_ALIVE: Headers = [(b"connection", b"keep-alive")]
"""An HTTP/1.0 client only keeps a connection it was told to keep."""


class H1Exchange:
    """One request on a downstream HTTP/1 connection; the upstream's `ResponseSink`."""

    __slots__ = ("buffered", "buffered_bytes", "chunked", "close_after", "cluster", "conn",
                 "decision", "expect_continue", "filters", "flags", "has_body", "head",
                 "head_sent", "recorded", "request_done", "start", "started", "stats", "status",
                 "stream", "timer", "trailers")

    def __init__(self, conn: H1Downstream, head: RequestHead, has_body: bool,
                 keep_alive: bool, expect_continue: bool, start: float) -> None:
        self.conn = conn
        self.head = head
        self.has_body = has_body
        self.request_done = not has_body
        self.close_after = not keep_alive
        self.expect_continue = expect_continue
        self.start = start
        self.buffered: list[bytes] | None = None
        self.buffered_bytes = 0
        self.trailers: Headers | None = None
        self.started = False
        self.recorded = False
        self.stream: UpstreamStream | None = None
        self.head_sent = False
        self.chunked = False
        self.status = 0
        self.flags = ""
        self.cluster = "-"
        self.stats: RequestStats | None = None
        self.timer: asyncio.TimerHandle | None = None
        """The route timeout's timer, for timeouts too short for the deadline sweeper."""
        self.filters: ChainRun | None = None
        """The route's filters on this request; None when the route has none."""
        self.decision: Decision | None = None
        """Where the request goes once its filters let it (set only with filters)."""

    # -- ResponseSink --------------------------------------------------------------------

    def on_informational(self, head: ResponseHead) -> None:
        if head.status == 100 and self.expect_continue:
            return  # we already said 100 Continue ourselves
        if self.head.version == b"1.1":
            self.conn.write(serialize_response_head(head, chunked=False, close=False))

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        conn = self.conn
        self.status = head.status
        if self.stream is None:
            return
        if self.filters is not None and not self.filters.response_head(head):
            return  # a filter answered instead (filter_reply)
        if conn.handle.draining:
            self.close_after = True
        elif conn.guard.rejecting and not self.close_after:
            self.close_after = True  # overloaded: no keep-alive
            conn.guard.count("disable_keepalive")
        bodyless = end_stream or self.head.method == b"HEAD" or head.status in (204, 304)
        if not bodyless and head.content_length is None:
            if self.head.version == b"1.1":
                self.chunked = True
            else:
                self.close_after = True  # HTTP/1.0: the close delimits the body
        if not self.request_done:
            self.close_after = True  # an early response: we will not read the rest
        self.head_sent = True
        data = serialize_response_head(
            head, chunked=self.chunked, close=self.close_after,
            extra=_KEEP_ALIVE if self.head.version == b"1.0" and not self.close_after else ())
        if end_stream:
            conn.write(data)
            self._finish()
        else:
            conn.write_head(data)

    def on_response_data(self, data: bytes) -> None:
        conn = self.conn
        if conn.tunnel is not None:
            conn.tunnel_active = conn.loop.time()
        if self.chunked:
            self.conn.write(encode_chunk(data))
        else:
            self.conn.write(data)

    def on_response_end(self, trailers: Headers | None) -> None:
        if self.conn.tunnel is not None:
            self.conn.tunnel_eof_from_upstream()
            return
        if self.chunked:
            self.conn.write(encode_last_chunk(trailers))
        self._finish()

    def on_read_end(self) -> None:
        conn = self.conn
        if conn._out is not None:
            conn._flush()

    def on_upstream_error(self, error: UpstreamError) -> None:
        self.flags = error.flag
        self.stream = None
        if self.head_sent or self.conn.tunnel is not None:
            self.status = self.status or error.status
            self.conn.exchange_failed(self)
            return
        self.local(error.status, error.detail.encode() + b"\n")

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        self.status = 101
        self.head_sent = True
        self.conn.write(serialize_response_head(
            head, chunked=False, close=False,
            extra=[(b"connection", b"upgrade")]))
        self.conn.start_tunnel(self, stream)

    def pause_request_body(self) -> None:
        self.conn.pause_reading("upstream")

    def resume_request_body(self) -> None:
        self.conn.resume_reading("upstream")

    # -- ChainPort -----------------------------------------------------------------------

    def filters_continue(self) -> None:
        d = self.decision
        if d is not None and not self.recorded and not self.conn.closing:
            self.conn._dispatch(self, d)

    def filter_reply(self, status: int, body: bytes) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.reset()  # answered on the response side: the upstream's response is dropped
        if not self.recorded:
            self.local(status, body)

    # -- helpers -------------------------------------------------------------------------

    def local(self, status: int, body: bytes) -> None:
        """Answer with a response of our own (errors, no route)."""
        self.status = status
        self.head_sent = True
        if not self.request_done or status in (400, 408, 431, 501, 505):
            self.close_after = True
        self.conn.write(local_response(status, body, close=self.close_after))
        self._finish()

    def on_timeout(self) -> None:
        self.timer = None
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.reset()
        self.flags = "UT"
        if self.head_sent:
            self.status = self.status or 504
            self.conn.exchange_failed(self)
        else:
            self.local(504, b"upstream request timeout\n")

    def record(self) -> None:
        """Count this exchange in the requests metric (once) and stop its timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.recorded:
            return
        self.recorded = True
        run = self.filters
        if run is not None:
            self.filters = None  # breaks exchange -> run -> exchange: freed without the GC
            run.done()
        conn = self.conn
        stats = self.stats or conn.ctx.stats(self.cluster)
        stats.count(self.status, self.flags, (conn.loop.time() - self.start) * 1000.0)

    def _finish(self) -> None:
        self.record()
        self.conn.exchange_done(self)


class H1Downstream(asyncio.Protocol, RoutedConnection):
    """A client connection speaking HTTP/1.x."""

    def __init__(self, handle: ListenerHandle, peer_ip: str = "", initial: bytes = b"",
                 router: Router | None = None, cluster: str | None = None) -> None:
        self.init_routing(handle, router, cluster)
        self.loop = asyncio.get_running_loop()
        self.guard = handle.guard
        self.transport: asyncio.Transport | None = None
        self.peer_ip = peer_ip.encode()
        self.codec = RequestCodec(self, self.ctx.max_header_bytes, self.ctx.scheme,
                                  limits=self.ctx.h1_limits)
        self._queue: deque[H1Exchange] = deque()
        self._receiving: H1Exchange | None = None
        self._paused: set[str] = set()
        self._write_paused = False
        self._advancing = False
        self._initial = initial
        self._early_tunnel: list[bytes] | None = None
        self._out: bytes | None = None
        """A response head held back by `write_head`."""
        self.tunnel: TunnelStream | None = None
        self.tunnel_active = 0.0
        """Loop time bytes last moved through the upgrade tunnel (its idle timeout)."""
        self._tunnel_cluster = "-"
        self._eof_in = False
        self._eof_out = False
        self._lingering = False
        self.closing = False
        self.deadline = 0.0
        self._deadline_kind = ""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        if not self.peer_ip:
            peer = transport.get_extra_info("peername")
            if peer:
                self.peer_ip = str(peer[0]).encode()
        if not self.handle.connection_opened(self):
            self.transport = None
            self.closing = True
            reset(transport)
            return
        self._set_deadline("header")
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
        if self._deadline_kind == "idle":  # (_set_deadline("header"), inlined: once a request)
            self._deadline_kind = "header"
            timeout = self.ctx.header_timeout
            self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0
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
            return False  # the client has read our answer and closed: done
        if self.tunnel is not None:
            self._eof_in = True
            self.tunnel.send_eof()
            return not self._eof_out  # half-close: the upstream may still answer
        q = self._queue
        if not q or not q[-1].request_done:
            # Nothing in flight, or a request cut short: nothing more can happen here.
            if q:
                q[0].flags = q[0].flags or "DC"
            return False
        # The client half-closed after whole requests: answer them, then close.
        self._eof_in = True
        for ex in q:
            ex.close_after = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        self.codec.close()  # breaks codec <-> parser <-> self: nothing waits for the cyclic GC
        self.handle.connection_closed(self)
        for ex in self._queue:
            stream, ex.stream = ex.stream, None
            if stream is not None:
                stream.reset()
            if ex.started:
                if ex.status != 101 and not ex.flags:
                    ex.flags = "DC"
                ex.record()
        self._queue.clear()
        self._receiving = None
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_response()
        elif self._queue:
            stream = self._queue[0].stream
            if stream is not None:
                stream.pause_response()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_response()
        elif self._queue:
            stream = self._queue[0].stream
            if stream is not None:
                stream.resume_response()

    # -- RequestHandler (from the codec) -------------------------------------------------

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        if self._deadline_kind != "request":  # a pipelined head: the one in flight keeps its own
            self.deadline = 0.0
            self._deadline_kind = ""
        ex = H1Exchange(self, head, has_body, keep_alive, expect_continue, self.loop.time())
        if head.upgrade:
            ex.close_after = True  # unless it becomes a tunnel, the parser is done with us
        self._receiving = ex
        self._queue.append(ex)
        if len(self._queue) == 1:
            self._advance()
        else:
            self.pause_reading("pipeline")

    def on_request_body(self, data: bytes) -> None:
        ex = self._receiving
        if ex is None:
            return
        if ex.stream is not None:
            ex.stream.send_data(data)
        elif not ex.head_sent:
            if ex.buffered is None:
                ex.buffered = []
            ex.buffered.append(data)
            ex.buffered_bytes += len(data)
            if ex.buffered_bytes > self.ctx.high_water:
                self.pause_reading("buffer")

    def on_request_end(self, trailers: Headers | None) -> None:
        ex = self._receiving
        if ex is None:
            return
        self._receiving = None
        if not ex.has_body and not ex.head.upgrade:
            return  # bodiless: _dispatch ended (or will end) the upstream request
        ex.request_done = True
        if ex.stream is not None:
            ex.stream.send_end(trailers)
        else:
            ex.trailers = trailers

    # -- exchanges -----------------------------------------------------------------------

    def _advance(self) -> None:
        """Start the exchange at the head of the queue; loop while they finish at once."""
        if self._advancing:
            return  # an outer _advance is running and will see the queue change
        self._advancing = True
        try:
            q = self._queue
            while q and not q[0].started and not self.closing:
                self._dispatch(q[0])
        finally:
            self._advancing = False

    def _dispatch(self, ex: H1Exchange, d: Decision | None = None) -> None:
        """Route `ex`, run its route's filters, open its upstream stream.  With `d` (the
        filters resumed after a STOP): only the last step."""
        head = ex.head
        ctx = self.ctx
        if d is None:
            ex.started = True
            if self.guard.rejecting:
                self.guard.count("reject_request")
                ex.flags = "OL"
                ex.close_after = True
                ex.local(503, b"overloaded\n")
                return
            if self.handle.ctx is not ctx:
                self.follow_snapshot()
                ctx = self.ctx
            d = resolve(ctx, self.router, self.cluster or "", head)
            ex.cluster = d.cluster_name
            ex.stats = d.stats
            if d.cluster is None:
                ex.flags = d.flag
                ex.local(d.status, d.body)
                return
            add_forwarding_headers(head, self.peer_ip, ctx.generate_request_id)
            if d.chain is not None:
                ex.decision = d
                ex.filters = run = ChainRun(d.chain, head, ex, ctx)
                if not run.request_head():
                    return  # answered, or stopped: filters_continue() comes back here
        cluster = d.cluster
        assert cluster is not None
        stream = cluster.open_stream(head, ex, not ex.has_body and not head.upgrade)
        if stream is None:
            ex.flags = "UH"
            ex.local(503, b"no healthy endpoint in cluster '%b'\n" % d.cluster_name.encode())
            return
        if ex.head_sent:
            return  # the pool failed the stream synchronously and ex answered already
        ex.stream = stream
        if self._write_paused:
            stream.pause_response()
        if self._deadline_kind == "request":  # a previous (pipelined) exchange's
            self.deadline = 0.0
            self._deadline_kind = ""
        timeout = d.timeout
        if timeout and not head.upgrade:
            if timeout >= ctx.sweep_timeout_min:  # the sweeper checks it (ADR 0010)
                self.deadline = self.loop.time() + timeout
                self._deadline_kind = "request"
            else:
                ex.timer = self.loop.call_later(timeout, ex.on_timeout)
        if ex.expect_continue and not ex.request_done:
            self.write(CONTINUE)
        if ex.buffered:
            chunks, ex.buffered = ex.buffered, None
            ex.buffered_bytes = 0
            for c in chunks:
                stream.send_data(c)
        if self._paused:
            self.resume_reading("buffer")
        if ex.request_done and ex.has_body and not head.upgrade:  # (bodiless: open_stream ended it)
            stream.send_end(ex.trailers)

    def exchange_done(self, ex: H1Exchange) -> None:
        q = self._queue
        if q and q[0] is ex:
            q.popleft()
        ex.stream = None
        if self._paused:
            self.resume_reading("upstream")  # the finished upstream can no longer push back
        if ex.close_after or self.closing or (self.handle.draining and not q):
            self._close()
            return
        if self._paused and len(q) <= 1:
            self.resume_reading("pipeline")
        if q:
            self._advance()
        elif self.codec.head_started:
            self._set_deadline("header")
        else:  # (_set_deadline("idle"), inlined: this runs once a keep-alive request)
            self._deadline_kind = "idle"
            timeout = self.ctx.idle_timeout
            self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

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
        self.tunnel = stream
        # From here the connection is an opaque relay: it gets the relay idle timeout
        # (`settings.tcp_idle_timeout_ms`, 0 disables), checked by the deadline sweeper.
        idle = self.ctx.settings.tcp_idle_timeout_ms / 1000
        self.tunnel_active = now = self.loop.time()
        self._tunnel_cluster = ex.cluster
        self.deadline = now + idle if idle else 0.0
        self._deadline_kind = "tunnel" if idle else ""
        early = self._early_tunnel
        self._early_tunnel = None
        for chunk in early or ():
            stream.send_data(chunk)
        self._paused.clear()
        if self._write_paused:
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
        self._flush()
        t.write_eof()

    # -- transport helpers ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            return
        self.ctx.m_bytes_sent.value += len(data)
        held = self._out
        if held is not None:
            self._out = None
            data = held + data
        t.write(data)

    def write_head(self, data: bytes) -> None:
        """Hold a response head back until the body's first bytes (usually in the same read of
        the upstream) so both leave in one system call; flushed when the upstream has handled
        the read that brought it (`H1Exchange.on_read_end`) if no body came in it."""
        if self.transport is None:
            return
        self.ctx.m_bytes_sent.value += len(data)
        if self._out is not None:
            self._flush()
        self._out = data

    def _flush(self) -> None:
        out = self._out
        self._out = None
        t = self.transport
        if out is not None and t is not None:
            t.write(out)

    def pause_reading(self, why: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(why)

    def resume_reading(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            if not self._paused and self.transport is not None and not self.closing:
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
            stream, first.stream = first.stream, None
            if stream is not None:
                stream.reset()
            first.flags = "DPE"
            if first.head_sent:
                self.exchange_failed(first)
            else:
                first.local(exc.status, exc.detail.encode() + b"\n")
            return
        self.write(local_response(exc.status, exc.detail.encode() + b"\n", close=True))
        self._close()

    def on_deadline(self, now: float) -> None:
        kind = self._deadline_kind
        self.deadline = 0.0
        self._deadline_kind = ""
        if kind == "linger":
            if self.transport is not None:
                self._flush()
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
            self._deadline_kind = "tunnel"
            return
        ctx = self.ctx
        ctx.metrics.tcp_idle_timeouts.labels(ctx.name, self._tunnel_cluster).value += 1
        self._close()

    def start_drain(self) -> None:
        if not self._queue and self.tunnel is None:
            self._close()

    def _close(self) -> None:
        self.closing = True
        t = self.transport
        if t is None or self._lingering:
            return
        self._flush()
        if self._eof_in or self.tunnel is not None or not t.can_write_eof():
            t.close()
            return
        self._lingering = True
        t.write_eof()
        self._paused.clear()
        t.resume_reading()  # drain (and drop) what the client still sends
        self._deadline_kind = "linger"
        self.deadline = self.loop.time() + LINGER_SECONDS

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
