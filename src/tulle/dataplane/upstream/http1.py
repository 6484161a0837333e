"""HTTP/1.1 upstream: a keep-alive connection pool per endpoint and the exchange on it.

The fast path allocates one `H1Stream` and reuses an idle connection without any task or
future; only opening a new connection goes through a coroutine (the one dialler, `connect.py`,
with the cluster's connect timeout).  One exchange per connection at a time: we never pipeline
upstream, which keeps a slow response from holding others hostage and makes a failed
connection's blast radius one request.

A request without an idle connection waits in `waiting` (a *pending* request, bounded by the
cluster's `max_pending_requests`: past it `open_stream` raises the 503 UO error) for a
connection dialled for it or released by another exchange.  A connection is dialled per waiting
request while the cluster is under `max_connections` (a pool with no connection at all still
dials one, as Envoy does, so its requests are never stranded); a connection is counted from its
dial's start to its loss.

The pool never retries.  A request that fails on a *reused* connection before any response byte
arrived, and that had no body, is reported `retry_safe` (the server closed an idle keep-alive
connection just as we wrote to it): the attempt layer replays it, so no client sees a 502.

Invariants that keep one exchange from leaking into the next:

* A connection goes back to the idle list only after the parser has consumed the whole read it
  was handed; bytes after the end of a response are an upstream protocol error that closes the
  connection, never the start of the next exchange's response.
* Flow-control state belongs to the exchange: a paused response is re-applied when the stream
  attaches, and a connection is released reading.  Request body written before the connection
  exists is bounded by `buffer_high_water_bytes`; above it the downstream is paused.
* A close-delimited body ends only on a clean close (FIN); a reset truncates it and is reported
  as an upstream reset.
* A response the router retries past (a retried 5xx) is dropped, not reset (`H1Stream.drop`):
  complete within the read that brought its head, its connection is reused like any other;
  otherwise the connection is closed (ADR 0059).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

from tulle.dataplane.exchange import (
    IDEMPOTENT,
    Headers,
    RequestHead,
    ResponseHead,
    ResponseSink,
    UpstreamError,
    connect_failure,
    upstream_protocol_error,
    upstream_reset,
)
from tulle.dataplane.protocols.http1 import (
    ProtocolError,
    ResponseCodec,
    encode_chunk,
    encode_last_chunk,
    serialize_request_head,
)
from tulle.dataplane.turn import HeldWrites, turn_writes
from tulle.dataplane.upstream.attempt import Attempt, now
from tulle.dataplane.upstream.connect import ConnectFailed, dial_transport

if TYPE_CHECKING:
    from tulle.dataplane.exchange import TunnelStream
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState


class H1Stream(Attempt):
    """One request/response exchange on an HTTP/1 upstream (the `UpstreamStream`), and the
    try it is (`Attempt`: counted in here, out at its end)."""

    __slots__ = ("chunked", "conn", "end_stream", "got_response", "h1pool", "head", "paused",
                 "pending", "pending_bytes", "request_done", "tunnel", "upload_paused",
                 "waiting", "was_reset")

    def __init__(self, pool: H1Pool, head: RequestHead, sink: ResponseSink,
                 end_stream: bool) -> None:
        self.pool = pool
        self.h1pool = pool
        """`pool` with its type: `Attempt.pool` is untyped (each protocol's pool is its own
        class), so compiled code reaches through it by generic attribute lookups; the pool's
        hot paths read this instead (ADR 0072).  Both always name the same pool."""
        self.head = head
        self.sink = sink
        self.end_stream = end_stream
        # The try (`Attempt`): counted in now, out by `_over` / `_failed`.
        pool.limits.requests += 1
        pool.endpoint.active += 1
        self.status = 0
        self.try_done = False
        self.opts = None
        self.start = now()
        self.chunked = not end_stream and head.content_length is None and not head.upgrade
        self.conn: H1Connection | None = None
        self.waiting = False
        """In the pool's `waiting` queue (a pending request)."""
        self.pending: list[bytes] | None = None
        """Request body written while waiting for a connection (a list only then)."""
        self.pending_bytes = 0
        self.upload_paused = False
        """We asked the downstream to stop sending body while no connection could take it."""
        self.paused = False
        """The downstream asked us to stop reading the response."""
        self.request_done = end_stream
        self.got_response = False
        self.was_reset = False
        self.tunnel = False

    @property
    def endpoint_key(self) -> str:
        """`Attempt.endpoint_key` through the typed pool (three generic reads fewer)."""
        return self.h1pool.endpoint.key

    def _write(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.write(data)
        elif self.pending is not None:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if not self.upload_paused and self.pending_bytes > self.h1pool.cluster.high_water:
                self.upload_paused = True
                self.sink.pause_request_body()

    def send_data(self, data: bytes) -> None:
        if self.was_reset or not data:
            return
        self._write(data if not self.chunked or self.tunnel else encode_chunk(data))

    def send_end(self, trailers: Headers | None = None) -> None:
        if self.was_reset or self.request_done:
            return
        self.request_done = True
        if self.chunked:
            self._write(encode_last_chunk(trailers))

    def send_eof(self) -> None:
        """Tunnels: the downstream half-closed."""
        conn = self.conn
        if conn is not None and conn.transport is not None and conn.transport.can_write_eof():
            conn.flush()
            conn.transport.write_eof()

    def close(self) -> None:
        self.reset()

    def reset(self) -> None:
        if self.was_reset:
            return
        self.was_reset = True
        self._over(self.status, "DC")
        conn = self.conn
        if conn is not None:
            conn.abandon(self)
        elif self.waiting:
            self.h1pool.unwait(self)

    def drop(self) -> None:
        """The router retries past this response (a retried 5xx): count the try out as that
        response, and let the response run to its end into nothing -- when it ends in the read
        that brought its head (a small error body: the usual case), the connection goes back
        to the pool as after any complete exchange.  One still unfinished at the end of that
        read (a long or slow body), a request not sent whole, or a tunnel, closes it: we do
        not hold a connection or wait on a peer for an answer nobody will read."""
        if self.was_reset:
            return
        if self.conn is None or not self.request_done or self.tunnel:
            Attempt.drop(self)
            return
        self._over(self.status, "")
        self.sink = _Dropped(self)

    def _rehome(self, pool: H1Pool) -> None:
        """A replay: nothing of the request left (no body, no response), so it starts over on
        `pool` as if new (the head is serialised again)."""
        self.pool = self.h1pool = pool
        self.conn = None
        self.got_response = False
        pool.adopt(self)

    def pause_response(self) -> None:
        self.paused = True
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.read_paused = True
            conn.transport.pause_reading()

    def resume_response(self) -> None:
        self.paused = False
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.read_paused = False
            conn.transport.resume_reading()


class _Dropped:
    """The sink of a dropped response (`H1Stream.drop`): discards it; at the end of the read
    that brought its head, an exchange still on its connection is reset (closing it)."""

    __slots__ = ("stream",)

    def __init__(self, stream: H1Stream) -> None:
        self.stream = stream

    def on_read_end(self) -> None:
        s = self.stream
        if s.conn is not None:
            s.reset()

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        pass

    def on_informational(self, head: ResponseHead) -> None:
        pass

    def on_response_data(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: Headers | None) -> None:
        pass

    def on_upstream_error(self, error: UpstreamError) -> None:
        pass

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        pass

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


class H1Connection(asyncio.Protocol):
    """An upstream connection; serves one `H1Stream` at a time."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.codec = ResponseCodec(self, pool.cluster.max_response_header_bytes,
                                   limits=pool.cluster.h1_limits)
        self.stream: H1Stream | None = None
        self.outq = HeldWrites(turn_writes(pool.loop))
        """What this connection writes, held to the end of the loop's turn (ADR 0065)."""
        self.keep_alive = True
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        self.write_paused = False
        self.read_paused = False
        self._ended: H1Stream | None = None
        """A response the parser finished in the current read, delivered once the read is done
        (with `_ended_trailers`)."""
        self._ended_trailers: Headers | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.outq.attach(transport)
        transport.set_write_buffer_limits(high=self.pool.cluster.high_water)

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None and stream.tunnel:
            stream.sink.on_response_data(data)
            return
        try:
            self.codec.feed(data)
        except ProtocolError as exc:
            self._close()
            if self._ended is None:  # else: bytes after a complete response; it still counts
                s = self.stream
                self.stream = None
                if s is not None:
                    s.conn = None
                    if not s.was_reset:
                        s._failed(upstream_protocol_error(exc.detail))
        ended = self._ended
        if ended is not None:
            self._ended = None
            trailers, self._ended_trailers = self._ended_trailers, None
            self._deliver_end(ended, trailers)
        if stream is not None and not stream.was_reset:
            stream.sink.on_read_end()  # a head held for its body's first bytes leaves now

    def eof_received(self) -> bool:
        stream = self.stream
        if stream is not None and stream.tunnel:
            stream.sink.on_response_end(None)
            return True  # keep the write side open: the client may still be sending
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._lost(exc)
        finally:
            self.codec.close()  # breaks codec <-> parser <-> self: nothing waits for the GC

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.outq.attach(None)
        self.outq.drop()
        self.pool.forget(self)
        stream = self.stream
        self.stream = None
        if stream is None or stream.was_reset:
            return
        stream.conn = None
        if stream.tunnel:
            if exc is not None:
                stream._failed(upstream_reset(f"upstream reset the tunnel: {exc}"))
            else:
                stream._over(stream.status, "")
                stream.sink.on_response_end(None)
            return
        if exc is None and self.codec.feed_eof():
            if not stream.was_reset:
                stream._over(stream.status, "")
                stream.sink.on_response_end(None)
            return  # a close-delimited body just ended
        detail = "upstream closed the connection" if exc is None else f"upstream reset: {exc}"
        # On a reused connection, a bodiless request with no answer most likely met the
        # server's idle close (the keep-alive race) and is sent again at once -- if it is
        # idempotent: a server may also have read it, acted and closed (RFC 9112 9.3.1: a
        # proxy must not retry a non-idempotent request automatically; a POST with
        # Content-Length: 0 was charged twice, attack audit, ADR 0100).
        safe = (self.reused and not stream.got_response and stream.end_stream
                and stream.head.method in IDEMPOTENT)
        stream._failed(UpstreamError(502, "UC", detail, retry_safe=safe))

    def pause_writing(self) -> None:
        self.write_paused = True
        s = self.stream
        if s is not None:
            s.sink.pause_request_body()

    def resume_writing(self) -> None:
        self.write_paused = False
        s = self.stream
        if s is not None:
            s.sink.resume_request_body()

    # -- exchange management -------------------------------------------------------------

    def attach(self, stream: H1Stream) -> None:
        """Start `stream` on this connection: write its head and anything it buffered."""
        self.stream = stream
        stream.conn = self
        head = stream.head
        self.codec.start(head.method == b"HEAD", head.upgrade != b"")
        pending = stream.pending
        if pending is not None:  # it waited for this connection
            stream.pending = None
            stream.pending_bytes = 0
        transport = self.transport
        assert transport is not None
        if stream.paused:
            self.read_paused = True
            transport.pause_reading()
        self.write(serialize_request_head(head, stream.chunked))
        for data in pending or ():
            self.write(data)
        if stream.upload_paused:
            stream.upload_paused = False
            if not self.write_paused:  # else resume_writing will resume the downstream
                stream.sink.resume_request_body()

    def abandon(self, stream: H1Stream) -> None:
        """The downstream gave up mid-exchange: this connection's state is unknown; close it."""
        if self.stream is stream:
            self.stream = None
            self._close()

    def _close(self) -> None:
        self.keep_alive = False
        self.outq.drop()  # closing means done with this peer: what was held is dropped
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> None:
        """Send `data` at the end of this turn with the turn's other writes (ADR 0065), or now
        with what is held when that reaches `turn.WRITE_NOW` bytes."""
        self.outq.write(data)

    def flush(self) -> None:
        """Write what is held now (before half-closing)."""
        self.outq.flush()

    # -- ResponseHandler (from the codec) ------------------------------------------------

    def on_head(self, head: ResponseHead, end_stream: bool, keep_alive: bool) -> None:
        s = self.stream
        if s is None:
            return
        s.got_response = True
        self.keep_alive = keep_alive
        if not s.status:  # `s._head(head.status)`, inlined: every response passes here
            s.status = head.status
            t = now()
            s.h1pool.endpoint.sample(t - s.start, t)
        s.sink.on_response_head(head, end_stream)

    def on_informational(self, head: ResponseHead) -> None:
        s = self.stream
        if s is not None:
            s.got_response = True
            s.sink.on_informational(head)

    def on_body(self, data: bytes) -> None:
        s = self.stream
        if s is not None:
            s.sink.on_response_data(data)

    def on_end(self, trailers: Headers | None) -> None:
        s = self.stream
        if s is not None:
            self._ended = s  # delivered when the parser has consumed the read (no tuple)
            self._ended_trailers = trailers

    def _deliver_end(self, s: H1Stream, trailers: Headers | None) -> None:
        if self.stream is s:
            self.stream = None
            s.conn = None
            if self.keep_alive and s.request_done and not self.closed:
                self.pool.release(self)
            else:
                self._close()
        if not s.was_reset:
            pool = s.h1pool
            if not s.try_done and s.opts is None and pool.cluster.on_outcome is None:
                # `s._over(s.status, "")` for a plain try, inlined: every response ends here
                s.try_done = True
                pool.endpoint.active -= 1
                pool.limits.requests -= 1
            else:
                s._over(s.status, "")
            s.sink.on_response_end(trailers)

    def on_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        s = self.stream
        if s is None:
            return
        s.got_response = True
        s._head(head.status)  # the tunnel stays in flight until it ends
        s.tunnel = True
        s.chunked = False
        s.sink.on_upgraded(head, s)
        if rest:
            s.sink.on_response_data(rest)


class H1Pool:
    """Keep-alive connections to one endpoint of one cluster."""

    def __init__(self, cluster: ClusterRuntime, endpoint: EndpointState) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.limits = cluster.limits
        """The cluster's counters (the same object for every runtime of this cluster name)."""
        self.idle: list[H1Connection] = []
        self.conns: set[H1Connection] = set()
        """Every open connection, idle or busy (kept at connect and loss, not per request)."""
        self.waiting: deque[H1Stream] = deque()
        """Requests waiting for a connection, oldest first."""
        self._connecting: dict[asyncio.Task[bool], None] = {}
        """Dials in progress, oldest first (a dict as an ordered set)."""
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def open_stream(self, head: RequestHead, sink: ResponseSink, end_stream: bool) -> H1Stream:
        """An exchange on an idle connection, or waiting for one (raises the 503 UO
        `UpstreamError` when the cluster's pending requests are at their limit)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                continue
            stream = H1Stream(self, head, sink, end_stream)
            conn.attach(stream)
            return stream
        limits = self.limits
        if limits.pending >= limits.max_pending:
            raise limits.overflow("pending")
        stream = H1Stream(self, head, sink, end_stream)
        self._wait(stream)
        return stream

    def adopt(self, stream: H1Stream) -> None:
        """Take a request another pool could not send (a replay, `Attempt._rehome`): on an
        idle connection, or waiting for one (raises 503 UO past the pending limit)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.attach(stream)
                return
        limits = self.limits
        if limits.pending >= limits.max_pending:
            raise limits.overflow("pending")
        self._wait(stream)

    def _wait(self, stream: H1Stream) -> None:
        self.limits.pending += 1
        stream.waiting = True
        stream.pending = []
        self.waiting.append(stream)
        self._dial_for_waiting()

    def unwait(self, stream: H1Stream) -> None:
        """A waiting request was reset: forget it, and a dial nobody waits for any more (a
        client that resets at once must not leave a dial behind: HTTP/2 rapid reset)."""
        stream.waiting = False
        self.limits.pending -= 1
        self.waiting.remove(stream)
        if len(self._connecting) > len(self.waiting):
            task = next(reversed(self._connecting))
            if task.cancel():  # gone now, so that the next request dials if it must
                del self._connecting[task]
                self.limits.connections -= 1

    def _dial_for_waiting(self) -> None:
        limits = self.limits
        while (len(self._connecting) < len(self.waiting)
               and (limits.can_connect()
                    or not (self.conns or self._connecting))):
            limits.connections += 1
            task = self.loop.create_task(self._connect())
            self._connecting[task] = None
            task.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[bool]) -> None:
        if task not in self._connecting:
            return  # cancelled by `unwait`, which counted it out
        del self._connecting[task]
        if task.cancelled() or not task.result():
            self.limits.connections -= 1  # else the connection's loss will (`forget`)
        if self.waiting:
            # A request that came while this finished dial still counted in `_connecting`
            # (between its failure and this callback) found "enough" dials and has none.
            self._dial_for_waiting()

    async def _connect(self) -> bool:
        """Dial a connection for the oldest waiting request; True when one was made."""
        cluster = self.cluster
        ep = self.endpoint
        try:
            _, conn = await dial_transport(
                lambda: H1Connection(self), ep.address, ep.port, cluster.connect_timeout,
                ssl_context=cluster.ssl_context, server_name=cluster.sni or None,
                peer_check=cluster.peer_check)
        except ConnectFailed as exc:
            cluster.m_connect_failures.value += 1
            self._dial_failed(connect_failure(
                f"cannot connect to {ep.key} ({cluster.name}): {exc.what}"))
            return False
        cluster.m_connections_total.value += 1
        cluster.m_connections_active.value += 1
        if not conn.closed:  # (a loss before this task resumed already counted it out)
            self.conns.add(conn)
        self._hand_out(conn)
        return True

    def _dial_failed(self, error: UpstreamError) -> None:
        """Fail the request this dial was for; all of them when nothing else can serve them."""
        waiting = self.waiting
        if not waiting:
            return
        others = len(self._connecting) - 1  # (this dial leaves `_connecting` after returning)
        n = len(waiting) if others <= 0 and not self.conns else 1
        for _ in range(n):
            s = waiting.popleft()
            s.waiting = False
            self.limits.pending -= 1
            s._failed(error)

    def _hand_out(self, conn: H1Connection) -> None:
        """A connection is free: the oldest waiting request takes it, else it goes idle."""
        if self.waiting and conn.transport is not None and not conn.transport.is_closing():
            s = self.waiting.popleft()
            s.waiting = False
            self.limits.pending -= 1
            conn.attach(s)
            return
        self.release(conn)

    def release(self, conn: H1Connection) -> None:
        if conn.transport is None or conn.transport.is_closing():
            conn._close()
            return
        conn.reused = True
        if conn.read_paused:  # the last exchange left it paused
            conn.read_paused = False
            conn.transport.resume_reading()
        if self.waiting:
            self._hand_out(conn)
            return
        if self.closed or len(self.idle) >= self.cluster.max_idle:
            conn._close()
            return
        conn.idle_since = (self._loop or self.loop).time()
        self.idle.append(conn)

    def forget(self, conn: H1Connection) -> None:
        """A connection closed (either side)."""
        self.cluster.m_connections_active.value -= 1
        self.limits.connections -= 1
        self.conns.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        if self.waiting:
            self._dial_for_waiting()  # its place under the connection limit is free

    def sweep(self, now: float, idle_timeout: float) -> None:
        """Close connections idle longer than `idle_timeout` seconds (0 keeps them)."""
        if idle_timeout <= 0:
            return
        for conn in [c for c in self.idle if now - c.idle_since > idle_timeout]:
            conn._close()

    def close(self) -> None:
        """Stop reusing: close idle connections now, busy ones when their exchange ends (the
        requests waiting for a connection still get one)."""
        self.closed = True
        for conn in list(self.idle):
            conn._close()
        self.idle.clear()

    def abort(self) -> None:
        self.close()
        for conn in list(self.conns):
            conn._close()
        for task in list(self._connecting):
            task.cancel()

    @property
    def active(self) -> int:
        return len(self.conns)

    @property
    def busy(self) -> int:
        """Connections carrying an exchange (the admin's `connections_busy`)."""
        return max(0, len(self.conns) - len(self.idle))
