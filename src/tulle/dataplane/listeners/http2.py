"""HTTP/2 downstream: the asyncio driver around `H2Codec`, many exchanges at once.

Serves h2c with prior knowledge (the client opens with the `PRI * HTTP/2.0` preface) and TLS
connections that negotiated ALPN `h2`.  Every stream is an `H2Exchange`: routed by the same
`dispatch` step as HTTP/1, then opened on the cluster, whose pool may speak either protocol.

Flow control both ways, per stream:

* client -> upstream: received DATA is acknowledged (the client's window reopened) only while
  the upstream takes it; when the upstream calls `pause_request_body` the bytes are counted and
  acknowledged on `resume_request_body`.  A slow upstream therefore stops the client after one
  window, and memory stays bounded by the windows we advertise.
* upstream -> client: the codec sends DATA only within the client's window and queues the rest;
  above the high-water mark the upstream is asked to `pause_response` until the queue drains.
  When the transport itself is above its high-water mark, nothing more is moved into it.

Writes: what the codec produced is written once per wake-up, not once per frame.  Inside
`data_received` that is at its end; a response arriving from the upstream (head, DATA, end,
often for several streams in one loop iteration) marks the connection and one `call_soon`
writes everything at the end of the iteration (`write_soon`).

Errors: a malformed frame is a connection error (GOAWAY PROTOCOL_ERROR, counted); a blown abuse
budget (floods, rapid reset; see `protocols/h2guard.py`) is GOAWAY ENHANCE_YOUR_CALM, counted by
kind and logged once; a malformed request (`protocols/h2fields.py`) is reset on its stream with
PROTOCOL_ERROR by the codec and only counted here; a bad request head is answered on its own
stream (431/501); upstream failures before the response head
become a local 502/503/504 (a trailers-only grpc-status for gRPC requests), after it
RST_STREAM(INTERNAL_ERROR) on that stream alone.
"""

from __future__ import annotations

import asyncio
import logging
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
    ListenerContext,
    ListenerHandle,
    RoutedConnection,
    reset,
)
from tulle.dataplane.listeners.dispatch import Decision, add_forwarding_headers, resolve
from tulle.dataplane.protocols.h2events import (
    DataReceived,
    EndReceived,
    Event,
    GoAwayReceived,
    RequestReceived,
    ResetReceived,
    SendDrained,
    StreamRejected,
)
from tulle.dataplane.protocols.h2guard import GuardLimits
from tulle.dataplane.protocols.h2translate import encode_response, grpc_trailers_only, is_grpc
from tulle.dataplane.protocols.http2 import (
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    H2Codec,
    H2Limits,
    H2ProtocolError,
)

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import Router

log = logging.getLogger("tulle.proxy")


def limits_for(ctx: ListenerContext) -> H2Limits:
    hw = ctx.high_water
    st = ctx.settings
    return H2Limits(max_header_bytes=ctx.max_header_bytes, stream_window=max(65_535, 4 * hw),
                    connection_window=max(1_048_576, 64 * hw), high_water=hw,
                    max_concurrent_streams=st.http2_max_concurrent_streams,
                    guard=GuardLimits(burst=st.http2_control_frame_burst,
                                      rate=float(st.http2_control_frame_rate),
                                      max_queued_control=st.http2_max_queued_control_frames,
                                      max_premature_resets=st.http2_max_premature_resets))


class H2Exchange:
    """One stream on a downstream HTTP/2 connection; the upstream's `ResponseSink`."""

    __slots__ = ("cluster", "conn", "decision", "done", "filters", "flags", "grpc", "head",
                 "head_sent", "request_done", "resp_paused", "sid", "start", "status", "stream",
                 "timer", "unacked", "upstream_paused")

    def __init__(self, conn: H2Downstream, sid: int, head: RequestHead | None, end: bool,
                 start: float) -> None:
        self.conn = conn
        self.sid = sid
        self.head = head
        self.request_done = end
        self.start = start
        self.grpc = head is not None and is_grpc(head)
        self.stream: UpstreamStream | None = None
        self.head_sent = False
        self.done = False
        self.status = 0
        self.flags = ""
        self.cluster = "-"
        self.timer: asyncio.TimerHandle | None = None
        self.unacked = 0
        self.upstream_paused = False
        self.resp_paused = False
        self.filters: ChainRun | None = None
        """The route's filters on this stream; None when the route has none."""
        self.decision: Decision | None = None
        """Where the request goes once its filters let it (set only with filters)."""

    # -- ResponseSink --------------------------------------------------------------------

    def on_informational(self, head: ResponseHead) -> None:
        if not self.done and head.status != 101:
            self.conn.codec.send_headers(self.sid, encode_response(head), False)
            self.conn.write_soon()

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        if self.done:
            return
        self.status = head.status
        if self.filters is not None and not self.filters.response_head(head):
            return  # a filter answered instead (filter_reply)
        self.head_sent = True
        conn = self.conn
        conn.codec.send_response(self.sid, head, end_stream)
        conn.write_soon()
        if end_stream:
            self.finish()

    def on_response_data(self, data: bytes) -> None:
        if self.done:
            return
        conn = self.conn
        if conn.codec.send_data(self.sid, data) and self.stream is not None:
            self.resp_paused = True
            self.stream.pause_response()
        conn.write_soon()

    def on_response_end(self, trailers: Headers | None) -> None:
        if self.done:
            return
        self.conn.codec.send_end(self.sid, trailers)
        self.conn.write_soon()
        self.finish()

    def on_read_end(self) -> None:
        pass  # HTTP/2 writes are already gathered per loop turn (`write_soon`)

    def on_upstream_error(self, error: UpstreamError) -> None:
        if self.done:
            return
        self.flags = error.flag
        self.stream = None
        if self.head_sent:
            self.status = self.status or error.status
            self.conn.codec.reset(self.sid, INTERNAL_ERROR)
            self.conn.write_soon()
            self.finish()
            return
        self.local(error.status, error.detail)

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        stream.close()  # HTTP/2 requests never ask for an upgrade; treat as a broken upstream
        self.stream = None
        self.flags = "UPE"
        self.local(502, "unexpected upgrade from upstream")

    def pause_request_body(self) -> None:
        self.upstream_paused = True

    def resume_request_body(self) -> None:
        self.upstream_paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            self.conn.codec.ack(self.sid, n)
            self.conn.write_soon()

    # -- ChainPort -----------------------------------------------------------------------

    def filters_continue(self) -> None:
        d = self.decision
        if d is not None and not self.done:
            self.conn.open_upstream(self, d)
            self.conn.write_soon()  # acks of body held while the filters were stopped

    def filter_reply(self, status: int, body: bytes) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.reset()  # answered on the response side: the upstream's response is dropped
        if not self.done:
            self.local(status, body.decode("latin-1").rstrip("\n"))

    # -- helpers -------------------------------------------------------------------------

    def local(self, status: int, detail: str) -> None:
        """Answer this stream ourselves (errors, no route)."""
        self.status = status
        self.head_sent = True
        codec = self.conn.codec
        if self.grpc:
            codec.send_headers(self.sid, grpc_trailers_only(status, detail), True)
        else:
            body = detail.encode() + b"\n"
            if codec.send_headers(self.sid, [
                    (b":status", b"%d" % status), (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(body))], False):
                codec.send_data(self.sid, body)
                codec.send_end(self.sid)
        self.conn.write_soon()
        self.finish()

    def on_timeout(self) -> None:
        self.timer = None
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.reset()
        self.flags = "UT"
        if self.head_sent:
            self.status = self.status or 504
            self.conn.codec.reset(self.sid, INTERNAL_ERROR)
            self.conn.write_soon()
            self.finish()
        else:
            self.local(504, "upstream request timeout")

    def abandon(self) -> None:
        """The client reset the stream or went away: reset the upstream, count it as DC."""
        self.flags = self.flags or "DC"
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.reset()
        self.request_done = True
        self.finish()

    def finish(self) -> None:
        """The response is complete (or abandoned): account for it and forget the stream."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        stream = self.stream
        self.stream = None
        if stream is not None and not self.request_done:
            stream.reset()  # an early response: the upstream need not read the rest either
        if not self.request_done and conn.codec.pending(self.sid) == 0:
            # RFC 9113 8.1: a complete response ends the exchange; the rest of the body is moot.
            conn.codec.reset(self.sid, NO_ERROR)
            conn.write_soon()
        if self.unacked:
            conn.codec.ack(self.sid, self.unacked)
            self.unacked = 0
        run = self.filters
        if run is not None:
            self.filters = None  # breaks exchange -> run -> exchange: freed without the GC
            run.done()
        conn.ctx.stats(self.cluster).count(
            self.status, self.flags, (conn.loop.time() - self.start) * 1000.0)
        conn.exchange_done(self)


class H2Downstream(asyncio.Protocol, RoutedConnection):
    """A client connection speaking HTTP/2."""

    def __init__(self, handle: ListenerHandle, peer_ip: str = "", initial: bytes = b"",
                 router: Router | None = None, cluster: str | None = None) -> None:
        self.init_routing(handle, router, cluster)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer_ip = peer_ip.encode()
        self.codec = H2Codec(client_side=False, limits=limits_for(self.ctx),
                             now=self.loop.time())
        self.exchanges: dict[int, H2Exchange] = {}
        self._initial = initial
        self.goaway_sent = False
        self.closing = False
        self.deadline = 0.0
        self._deadline_kind = ""
        self._got_request = False
        self._write_pending = False

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
        self.write_out()  # our SETTINGS
        if self._initial:
            data, self._initial = self._initial, b""
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.ctx.m_bytes_received.value += len(data)
        if self.closing:
            return
        try:
            events = self.codec.feed(data, self.loop.time())
        except H2ProtocolError as exc:
            self.ctx.protocol_error(exc.kind)
            if exc.abuse:  # once per connection: it is closed right after
                log.warning("listener %s: HTTP/2 connection from %s closed with "
                            "ENHANCE_YOUR_CALM (%s): %s", self.ctx.name,
                            self.peer_ip.decode(errors="replace"), exc.kind, exc.detail)
            self.write_out()  # the GOAWAY h2 queued
            self._reset_all()
            self._close()
            return
        self._handle(events)
        self.write_out()
        if self.goaway_sent and not self.exchanges:
            self._maybe_close()  # queued DATA of finished streams may just have gone out

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        self.handle.connection_closed(self)
        self._reset_all()

    def pause_writing(self) -> None:
        self.codec.write_blocked = True

    def resume_writing(self) -> None:
        self.codec.write_blocked = False
        self._handle(self.codec.flush())
        self.write_out()
        if self.goaway_sent and not self.exchanges:
            self._maybe_close()

    # -- events --------------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        exchanges = self.exchanges
        for ev in events:
            if isinstance(ev, DataReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None and ex.stream is not None:
                    ex.stream.send_data(ev.data)
                    if ex.upstream_paused:
                        ex.unacked += ev.flow_length
                        continue
                elif ex is not None and ex.filters is not None and not ex.done:
                    # The filters stopped the head: hold the body, unacknowledged (the stream
                    # window bounds it) until they let the request go upstream.
                    if ex.filters.held is None:
                        ex.filters.held = []
                    ex.filters.held.append(ev.data)
                    ex.unacked += ev.flow_length
                    continue
                self.codec.ack(ev.stream_id, ev.flow_length)
            elif isinstance(ev, RequestReceived):
                self._on_request(ev.stream_id, ev.head, ev.end_stream)
            elif isinstance(ev, EndReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.request_done = True
                    if ex.stream is not None:
                        ex.stream.send_end(ev.trailers)
                    elif ex.filters is not None:
                        ex.filters.held_trailers = ev.trailers
            elif isinstance(ev, SendDrained):
                ex = exchanges.get(ev.stream_id)
                if ex is not None and ex.resp_paused:
                    ex.resp_paused = False
                    if ex.stream is not None:
                        ex.stream.resume_response()
                elif not exchanges:
                    self._maybe_close()
            elif isinstance(ev, ResetReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.abandon()
            elif isinstance(ev, StreamRejected):
                self.ctx.protocol_error(ev.kind)
                self._got_request = True
                if ev.status == 0:
                    continue  # malformed: the codec reset it with PROTOCOL_ERROR
                ex = H2Exchange(self, ev.stream_id, None, ev.end_stream, self.loop.time())
                exchanges[ev.stream_id] = ex
                ex.local(ev.status, ev.detail)
            elif isinstance(ev, GoAwayReceived):
                self.start_drain()

    def _on_request(self, sid: int, head: RequestHead, end: bool) -> None:
        self._got_request = True
        if self.goaway_sent:
            self.codec.reset(sid, REFUSED_STREAM)
            return
        self.deadline = 0.0
        self._deadline_kind = ""
        ex = H2Exchange(self, sid, head, end, self.loop.time())
        self.exchanges[sid] = ex
        guard = self.handle.guard
        if guard.rejecting:  # overloaded: 503, and GOAWAY so the client stops reusing us
            guard.count("reject_request")
            ex.flags = "OL"
            ex.local(503, "overloaded")
            self.start_drain()
            return
        self.follow_snapshot()
        d = resolve(self.ctx, self.router, self.cluster or "", head)
        ex.cluster = d.cluster_name
        cluster = d.cluster
        if cluster is None:
            ex.flags = d.flag
            ex.local(d.status, d.body.decode("latin-1").rstrip("\n"))
            return
        add_forwarding_headers(head, self.peer_ip, self.ctx.generate_request_id)
        if d.chain is not None:
            ex.decision = d
            ex.filters = run = ChainRun(d.chain, head, ex, self.ctx)
            if not run.request_head():
                return  # answered, or stopped: filters_continue() opens the upstream later
        stream = cluster.open_stream(head, ex, end)
        if stream is None:
            ex.flags = "UH"
            ex.local(503, f"no healthy endpoint in cluster '{d.cluster_name}'")
            return
        ex.stream = stream
        if d.timeout_ms:
            ex.timer = self.loop.call_later(d.timeout_ms / 1000, ex.on_timeout)

    def open_upstream(self, ex: H2Exchange, d: Decision) -> None:
        """After the filters resumed: open the upstream and pass on the body they held."""
        run = ex.filters
        assert run is not None and d.cluster is not None and ex.head is not None
        held, run.held = run.held, None
        trailers = run.held_trailers
        stream = d.cluster.open_stream(ex.head, ex, ex.request_done and not held
                                       and trailers is None)
        if stream is None:
            ex.flags = "UH"
            ex.local(503, f"no healthy endpoint in cluster '{d.cluster_name}'")
            return
        if ex.done:
            return  # the pool failed the stream synchronously and ex answered already
        ex.stream = stream
        for chunk in held or ():
            stream.send_data(chunk)
        if ex.request_done and (held or trailers is not None):
            stream.send_end(trailers)
        if ex.unacked and not ex.upstream_paused:
            n, ex.unacked = ex.unacked, 0
            self.codec.ack(ex.sid, n)
        if d.timeout_ms:
            ex.timer = self.loop.call_later(d.timeout_ms / 1000, ex.on_timeout)

    def exchange_done(self, ex: H2Exchange) -> None:
        self.exchanges.pop(ex.sid, None)
        if not self.exchanges:
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.exchanges:
            return
        if self.goaway_sent or self.handle.draining:
            if self.codec.idle:
                self._close()
            return
        self._set_deadline("idle")

    def _reset_all(self) -> None:
        for ex in list(self.exchanges.values()):
            ex.abandon()
        self.exchanges.clear()

    # -- transport helpers ---------------------------------------------------------------

    def write_out(self) -> None:
        """Write what the codec has queued, now."""
        data = self.codec.data_to_send()
        t = self.transport
        if data and t is not None:
            self.ctx.m_bytes_sent.value += len(data)
            t.write(data)

    def write_soon(self) -> None:
        """Write what the codec has queued at the end of this loop iteration (one write for
        everything the upstreams delivered meanwhile)."""
        if not self._write_pending:
            self._write_pending = True
            self.loop.call_soon(self._write_later)

    def _write_later(self) -> None:
        self._write_pending = False
        self.write_out()

    def on_deadline(self, now: float) -> None:
        kind = self._deadline_kind
        self.deadline = 0.0
        self._deadline_kind = ""
        if self.exchanges:
            return
        if kind == "header" and not self._got_request:
            self.ctx.protocol_error("header_timeout")
        self.start_drain()

    def start_drain(self) -> None:
        """GOAWAY with the last stream we took; close once the streams in flight are done."""
        if not self.goaway_sent and self.transport is not None:
            self.goaway_sent = True
            self.codec.goaway(NO_ERROR, self.codec.highest_inbound_stream_id)
            self.write_out()
        self._maybe_close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.write_out()  # what `write_soon` left for later goes out before the close
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
