"""HTTP/1.1 upstream: a keep-alive connection pool per endpoint and the exchange on it.

The fast path allocates one `H1Stream` and reuses an idle connection without any task or
future; only opening a new connection goes through a coroutine (with the cluster's connect
timeout).  One exchange per connection at a time: we never pipeline upstream, which keeps a
slow response from holding others hostage and makes a failed connection's blast radius one
request.

A request that fails on a *reused* connection before any response byte arrived, and that had no
body, is replayed once on a fresh connection: the server closed an idle keep-alive connection
just as we wrote to it, which no client should see as a 502.

Invariants that keep one exchange from leaking into the next:

* A connection goes back to the idle list only after the parser has consumed the whole read it
  was handed; bytes after the end of a response are an upstream protocol error that closes the
  connection, never the start of the next exchange's response.
* Flow-control state belongs to the exchange: a paused response is re-applied when the stream
  attaches, and a connection is released reading.  Request body written before the connection
  exists is bounded by `buffer_high_water_bytes`; above it the downstream is paused.
* A close-delimited body ends only on a clean close (FIN); a reset truncates it and is reported
  as an upstream reset.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, cast

from tulle.dataplane.exchange import (
    Headers,
    RequestHead,
    ResponseHead,
    ResponseSink,
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

if TYPE_CHECKING:
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState


class H1Stream:
    """One request/response exchange on an HTTP/1 upstream (the `UpstreamStream`)."""

    __slots__ = ("chunked", "conn", "dial", "end_stream", "got_response", "head", "paused",
                 "pending",
                 "pending_bytes", "pool", "request_done", "retried", "sink", "tunnel",
                 "upload_paused", "was_reset")

    def __init__(self, pool: H1Pool, head: RequestHead, sink: ResponseSink,
                 end_stream: bool) -> None:
        self.pool = pool
        self.head = head
        self.sink = sink
        self.end_stream = end_stream
        self.chunked = not end_stream and head.content_length is None and not head.upgrade
        self.conn: H1Connection | None = None
        self.dial: asyncio.Task[None] | None = None
        """The connect attempt made for this stream, cancelled if the stream is reset first
        (a client that resets at once must not leave a dial behind: HTTP/2 rapid reset)."""
        self.pending: list[bytes] | None = []
        self.pending_bytes = 0
        self.upload_paused = False
        """We asked the downstream to stop sending body while no connection could take it."""
        self.paused = False
        """The downstream asked us to stop reading the response."""
        self.request_done = end_stream
        self.got_response = False
        self.was_reset = False
        self.retried = False
        self.tunnel = False

    def _write(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.write(data)
        elif self.pending is not None:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if not self.upload_paused and self.pending_bytes > self.pool.cluster.high_water:
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
            conn.transport.write_eof()

    def close(self) -> None:
        self.reset()

    def reset(self) -> None:
        if self.was_reset:
            return
        self.was_reset = True
        conn = self.conn
        if conn is not None:
            conn.abandon(self)
        elif self.dial is not None:
            self.dial.cancel()
            self.dial = None

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


class H1Connection(asyncio.Protocol):
    """An upstream connection; serves one `H1Stream` at a time."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.codec = ResponseCodec(self, pool.cluster.max_response_header_bytes,
                                   limits=pool.cluster.h1_limits)
        self.stream: H1Stream | None = None
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
                        s.sink.on_upstream_error(upstream_protocol_error(exc.detail))
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
        self.pool.forget(self)
        stream = self.stream
        self.stream = None
        if stream is None or stream.was_reset:
            return
        stream.conn = None
        if stream.tunnel:
            if exc is not None:
                stream.sink.on_upstream_error(upstream_reset(f"upstream reset the tunnel: {exc}"))
            else:
                stream.sink.on_response_end(None)
            return
        if exc is None and self.codec.feed_eof():
            if not stream.was_reset:
                stream.sink.on_response_end(None)
            return  # a close-delimited body just ended
        if (self.reused and not stream.got_response and stream.end_stream
                and not stream.retried):
            stream.retried = True
            stream.pending = []
            stream.pending_bytes = 0
            self.pool.connect_for(stream)
            return
        detail = "upstream closed the connection" if exc is None else f"upstream reset: {exc}"
        stream.sink.on_upstream_error(upstream_reset(detail))

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
        stream.pending = None
        stream.pending_bytes = 0
        transport = self.transport
        assert transport is not None
        if stream.paused:
            self.read_paused = True
            transport.pause_reading()
        wire = serialize_request_head(head, stream.chunked)
        if pending:
            transport.writelines([wire, *pending])
        else:
            transport.write(wire)
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
        if self.transport is not None:
            self.transport.close()

    # -- ResponseHandler (from the codec) ------------------------------------------------

    def on_head(self, head: ResponseHead, end_stream: bool, keep_alive: bool) -> None:
        s = self.stream
        if s is None:
            return
        s.got_response = True
        self.keep_alive = keep_alive
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
            s.sink.on_response_end(trailers)

    def on_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        s = self.stream
        if s is None:
            return
        s.got_response = True
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
        self.idle: list[H1Connection] = []
        self.busy: set[H1Connection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def open_stream(self, head: RequestHead, sink: ResponseSink, end_stream: bool) -> H1Stream:
        stream = H1Stream(self, head, sink, end_stream)
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is None or conn.transport.is_closing():
                continue
            conn.reused = True
            self.busy.add(conn)
            conn.attach(stream)
            return stream
        self.connect_for(stream)
        return stream

    def connect_for(self, stream: H1Stream) -> None:
        task = stream.dial = asyncio.get_running_loop().create_task(self._connect(stream))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, stream: H1Stream) -> None:
        cluster = self.cluster
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        ssl_ctx: ssl.SSLContext | None = cluster.ssl_context
        try:
            async with asyncio.timeout(cluster.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(self), ep.address, ep.port, ssl=ssl_ctx,
                    server_hostname=(cluster.sni or None) if ssl_ctx else None)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            cluster.m_connect_failures.value += 1
            if not stream.was_reset:
                what = "timed out" if isinstance(exc, TimeoutError) else (
                    exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc))
                stream.sink.on_upstream_error(connect_failure(
                    f"cannot connect to {ep.key} ({cluster.name}): {what}"))
            return
        stream.dial = None
        cluster.m_connections_total.value += 1
        cluster.m_connections_active.value += 1
        if stream.was_reset or self.closed:  # a made connection: the next request may take it
            self.release(conn)
            return
        self.busy.add(conn)
        conn.attach(stream)

    def release(self, conn: H1Connection) -> None:
        self.busy.discard(conn)
        if (self.closed or len(self.idle) >= self.cluster.max_idle or conn.transport is None
                or conn.transport.is_closing()):
            conn._close()
            return
        conn.reused = True
        conn.idle_since = (self._loop or self.loop).time()
        if conn.read_paused:  # the last exchange left it paused
            conn.read_paused = False
            conn.transport.resume_reading()
        self.idle.append(conn)

    def forget(self, conn: H1Connection) -> None:
        """A connection closed (either side)."""
        self.cluster.m_connections_active.value -= 1
        self.busy.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float, idle_timeout: float) -> None:
        """Close connections idle longer than `idle_timeout` seconds (0 keeps them)."""
        if idle_timeout <= 0:
            return
        for conn in [c for c in self.idle if now - c.idle_since > idle_timeout]:
            conn._close()

    def close(self) -> None:
        """Stop reusing: close idle connections now, busy ones when their exchange ends."""
        self.closed = True
        for conn in list(self.idle):
            conn._close()
        self.idle.clear()

    def abort(self) -> None:
        self.close()
        for conn in list(self.busy):
            conn._close()
        for task in list(self._connecting):
            task.cancel()

    @property
    def active(self) -> int:
        return len(self.busy) + len(self.idle)
