"""HTTP/2 upstream: multiplexed connections per endpoint and the streams on them.

An `H2Pool` (`http2_pool.py`) holds the connections to one endpoint; this module has the
stream and the connection.  A new exchange goes on the first connection with room (fewer open
streams than both the cluster's `max_concurrent_streams` and the server's
SETTINGS_MAX_CONCURRENT_STREAMS); when none has room it waits in `waiting` (a *pending* request,
bounded by the cluster's `max_pending_requests`: past it `open_stream` raises the 503 UO error)
and another connection is dialled (h2c with prior knowledge, or TLS with ALPN h2) through the
one dialler, `connect.py`, while the cluster is under `max_connections` (a pool with no
connection at all still dials one).  `open_stream` never calls the sink: every failure is
reported from a later callback (a connect task, a frame).

Failures and what the downstream sees (`ResponseSink.on_upstream_error`).  The pool never
retries; it marks what is safe to send again (`retry_safe`) and the attempt layer decides:

* connect failure or timeout: `connect_failure` (503) for the exchanges that waited for it;
* RST_STREAM from the server: `upstream_reset` (502); REFUSED_STREAM on a stream that sent no
  body yet is retry-safe (the server did not process it, RFC 9113 8.7); with some body sent
  it is still `unprocessed` (the router's retry, which kept the body, may send it again);
* GOAWAY: streams above the last stream id were not processed: `upstream_reset`, retry-safe for
  those that sent no body yet.  The connection takes no new streams and closes when its last
  stream ends;
* connection loss: every stream on it fails with `upstream_reset`.

Flow control mirrors the downstream driver: response DATA is acknowledged only while the
downstream takes it (`pause_response` / `resume_response`), and request DATA goes out only
within the server's window, the producer being paused above the high-water mark.

Writes: as downstream, what the codec produced is written once per wake-up: at the end of
`data_received`, and for what the streams do (open, body, end, reset, acknowledgements) by one
`call_soon` at the end of the loop iteration (`write_soon`), so the streams one downstream read
opened leave in one write.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from tulle.dataplane.exchange import (
    TOO_MANY_INFORMATIONAL,
    Headers,
    RequestHead,
    ResponseSink,
    UpstreamError,
    upstream_protocol_error,
    upstream_reset,
)
from tulle.dataplane.protocols.h2common import (
    CANCEL,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Limits,
    H2ProtocolError,
    windows_for,
)
from tulle.dataplane.protocols.h2engine import new_codec
from tulle.dataplane.protocols.h2events import (
    DataReceived,
    EndReceived,
    Event,
    GoAwayReceived,
    InformationalFlood,
    InformationalReceived,
    ResetReceived,
    ResponseReceived,
    SendDrained,
)
from tulle.dataplane.upstream.attempt import Attempt, now

if TYPE_CHECKING:
    from tulle.dataplane.upstream.http2_pool import H2Pool


class H2UpStream(Attempt):
    """One exchange on an HTTP/2 upstream (the `UpstreamStream`), and the try it is
    (`Attempt`: counted in here, out at its end)."""

    __slots__ = ("conn", "data_sent", "end_sent", "end_stream", "head", "paused", "pending",
                 "pending_size", "req_paused", "response_started", "sid",
                 "trailers", "unacked", "was_reset")

    def __init__(self, pool: H2Pool, head: RequestHead, sink: ResponseSink,
                 end_stream: bool) -> None:
        self.pool = pool
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
        self.conn: H2UpConnection | None = None
        self.sid = 0
        self.pending: list[bytes] = []
        """Body received before the stream has a connection."""
        self.pending_size = 0
        self.end_sent = end_stream
        self.trailers: Headers | None = None
        self.data_sent = 0
        self.response_started = False
        self.was_reset = False
        self.paused = False
        self.req_paused = False
        self.unacked = 0

    def send_data(self, data: bytes) -> None:
        if self.was_reset or not data:
            return
        conn = self.conn
        if conn is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > self.pool.cluster.high_water and not self.req_paused:
                self.req_paused = True
                self.sink.pause_request_body()
            return
        self.data_sent += len(data)
        if conn.codec.send_data(self.sid, data) and not self.req_paused:
            self.req_paused = True
            self.sink.pause_request_body()
        conn.write_soon()

    def send_end(self, trailers: Headers | None = None) -> None:
        if self.was_reset or self.end_sent:
            return
        self.end_sent = True
        conn = self.conn
        if conn is None:
            self.trailers = trailers
            return
        conn.codec.send_end(self.sid, trailers)
        conn.write_soon()

    def reset(self) -> None:
        if self.was_reset:
            return
        self.was_reset = True
        self._over(self.status, "DC")
        conn = self.conn
        if conn is not None:
            conn.reset_stream(self)
        else:
            self.pool.unwait(self)

    def close(self) -> None:
        self.reset()

    def pause_response(self) -> None:
        self.paused = True

    def resume_response(self) -> None:
        self.paused = False
        conn = self.conn
        if self.unacked and conn is not None:
            n, self.unacked = self.unacked, 0
            conn.codec.ack(self.sid, n)
            conn.write_soon()

    def _rehome(self, pool: H2Pool) -> None:
        """A replay: the server did not process the stream and no body left, so it waits for
        a connection of `pool` as if new."""
        self.pool = pool
        self.conn = None
        self.sid = 0
        pool.adopt(self)

    @property
    def retryable(self) -> bool:
        """Nothing of the request body left us and no response came: safe to send elsewhere."""
        return not self.response_started and self.data_sent == 0


class H2UpConnection(asyncio.Protocol):
    """An upstream HTTP/2 connection carrying many `H2UpStream`s."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        cluster = pool.cluster
        hw = cluster.high_water
        stream_window, connection_window = windows_for(hw)
        self.codec = new_codec(client_side=True, limits=H2Limits(
            max_header_bytes=cluster.max_response_header_bytes,
            stream_window=stream_window, connection_window=connection_window, high_water=hw))
        self.scheme = b"https" if cluster.ssl_context is not None else b"http"
        self.loop = cluster.loop
        """(Kept: `asyncio.get_running_loop()` costs a `getpid` system call each time.)"""
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2UpStream] = {}
        self.goaway = False
        self.closed = False
        self.idle_since = 0.0
        self._write_pending = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.pool.cluster.high_water)
        self.pool.cluster.m_connections_total.value += 1
        self.pool.cluster.m_connections_active.value += 1
        self.idle_since = self.loop.time()
        self.write_out()  # preface + SETTINGS

    def data_received(self, data: bytes) -> None:
        try:
            events = self.codec.feed(data)
        except H2ProtocolError as exc:
            self.write_out()
            self._fail_all(upstream_protocol_error(f"upstream HTTP/2 error: {exc.detail}"))
            self._close()
            return
        self._handle(events)
        self.write_out()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool.cluster.m_connections_active.value -= 1
        self.pool.limits.connections -= 1
        self.pool.forget(self, closed=True)
        detail = "upstream closed the connection" if exc is None else f"upstream reset: {exc}"
        self._fail_all(upstream_reset(detail))

    def pause_writing(self) -> None:
        self.codec.write_blocked = True

    def resume_writing(self) -> None:
        self.codec.write_blocked = False
        self._handle(self.codec.flush())
        self.write_out()

    # -- events --------------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        streams = self.streams
        held: list[ResponseSink] | None = None
        """Sinks given a head with a body to come: told when this batch is done."""
        for ev in events:
            if isinstance(ev, DataReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.sink.on_response_data(ev.data)
                    if s.paused:
                        s.unacked += ev.flow_length
                        continue
                self.codec.ack(ev.stream_id, ev.flow_length)
            elif isinstance(ev, ResponseReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    if ev.head.status < 100:
                        self._bad_status(s, ev.head.status)
                        continue
                    s.response_started = True
                    s._head(ev.head.status)
                    if ev.end_stream:
                        self._response_complete(s)
                        s._over(s.status, "")
                    s.sink.on_response_head(ev.head, ev.end_stream)
                    if not ev.end_stream:
                        if held is None:
                            held = []
                        held.append(s.sink)
            elif isinstance(ev, EndReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    self._response_complete(s)
                    s._over(s.status, "")
                    s.sink.on_response_end(ev.trailers)
            elif isinstance(ev, InformationalReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    if ev.head.status < 100:
                        self._bad_status(s, ev.head.status)
                        continue
                    s.sink.on_informational(ev.head)
            elif isinstance(ev, SendDrained):
                s = streams.get(ev.stream_id)
                if s is not None and s.req_paused:
                    s.req_paused = False
                    s.sink.resume_request_body()
            elif isinstance(ev, ResetReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    self._done(s)
                    s._failed(UpstreamError(
                        502, "UC", f"upstream reset the stream (HTTP/2 error code "
                        f"{ev.error_code})",
                        retry_safe=ev.error_code == REFUSED_STREAM and s.retryable,
                        unprocessed=ev.error_code == REFUSED_STREAM
                        and not s.response_started))
            elif isinstance(ev, GoAwayReceived):
                self._on_goaway(ev.last_stream_id)
            elif isinstance(ev, InformationalFlood):
                # past MAX_INFORMATIONAL 1xx heads: the codec reset the stream (ADR 0115)
                s = streams.get(ev.stream_id)
                if s is not None:
                    self._done(s)
                    s._failed(upstream_protocol_error(TOO_MANY_INFORMATIONAL))
        if held is not None:
            for sink in held:
                sink.on_read_end()

    def _bad_status(self, s: H2UpStream, status: int) -> None:
        """A `:status` below 100 (`099`, `000`): three digits, which is all libnghttp2 checks,
        and no status (RFC 9110 15: 100-599).  Taken as a 1xx it reached the client as
        `:status: 99` with no final answer after it (attack audit, ADR 0094): the stream is
        reset and the request fails as an upstream protocol error (502, UPE)."""
        self.codec.reset(s.sid, PROTOCOL_ERROR)
        self._done(s)
        s._failed(upstream_protocol_error(f"upstream response status {status:03d}"))

    def _on_goaway(self, last_stream_id: int) -> None:
        self.goaway = True
        self.pool.forget(self)
        for sid, s in sorted(self.streams.items()):
            if sid <= last_stream_id:
                continue
            self._done(s)
            s._failed(UpstreamError(
                502, "UC", "upstream sent GOAWAY before processing the stream",
                retry_safe=s.retryable, unprocessed=not s.response_started))
        if not self.streams:
            self._close()

    # -- streams -------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        if self.goaway or self.closed or self.transport is None or self.transport.is_closing():
            return 0
        codec = self.codec
        return min(self.pool.cluster.max_concurrent_streams - len(self.streams),
                   codec.remote_max_concurrent_streams - codec.open_outbound_streams)

    def start(self, s: H2UpStream) -> bool:
        """Open `s` here: its head, then whatever body it buffered.  False if h2 refused."""
        codec = self.codec
        end = s.end_stream or (s.end_sent and not s.pending and s.trailers is None)
        try:
            sid = codec.send_request(s.head, self.scheme, end)
        except Exception:  # h2 refused the head (e.g. a header value it will not encode)
            return False
        s.sid = sid
        s.conn = self
        self.streams[sid] = s
        if s.pending:
            chunks, s.pending, s.pending_size = s.pending, [], 0
            for c in chunks:
                s.data_sent += len(c)
                codec.send_data(sid, c)
            if s.req_paused and codec.pending(sid) <= codec.high_water:
                s.req_paused = False
                s.sink.resume_request_body()
        if s.end_sent and not end:
            codec.send_end(sid, s.trailers)
            s.trailers = None
        self.write_soon()
        return True

    def reset_stream(self, s: H2UpStream) -> None:
        if self.streams.get(s.sid) is s:
            self._done(s)
            self.codec.reset(s.sid, CANCEL)
            self.write_soon()

    def _response_complete(self, s: H2UpStream) -> None:
        """The response ended.  If the request has not (an early response, RFC 9113 8.1), its
        remainder is not wanted: RST_STREAM(NO_ERROR) closes our side, or the stream would
        keep counting against the connection's concurrency limit for good."""
        self._done(s)
        if not s.end_sent:
            s.end_sent = True
            self.codec.reset(s.sid, NO_ERROR)
            self.write_soon()

    def _done(self, s: H2UpStream) -> None:
        """`s` needs nothing more from this connection."""
        if self.streams.pop(s.sid, None) is None:
            return
        if self.streams:
            self.pool.kick()
            return
        self.idle_since = self.loop.time()
        if self.goaway or self.pool.closed:
            self._close()
        else:
            self.pool.kick()

    def _fail_all(self, error: UpstreamError) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for s in streams:
            if not s.was_reset:
                s._failed(error)

    # -- transport helpers ---------------------------------------------------------------

    def write_out(self) -> None:
        """Write what the codec has queued, now."""
        data = self.codec.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def write_soon(self) -> None:
        """Write what the codec has queued at the end of this loop iteration: the streams a
        downstream read opened, their bodies and ends go out in one write."""
        if not self._write_pending:
            self._write_pending = True
            self.loop.call_soon(self._write_later)

    def _write_later(self) -> None:
        self._write_pending = False
        self.write_out()

    def close_gracefully(self) -> None:
        if self.transport is not None and not self.goaway:
            self.goaway = True
            self.codec.goaway(NO_ERROR)
            self.write_out()
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.write_out()  # what `write_soon` left for later goes out before the close
            self.transport.close()
