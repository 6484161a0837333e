"""HTTP/2 downstream: the asyncio driver around `H2Codec`, many exchanges at once.

Serves h2c with prior knowledge (the client opens with the `PRI * HTTP/2.0` preface) and TLS
connections that negotiated ALPN `h2`.  Every stream is an `H2Exchange` (`h2exchange.py`),
a request stream (`http/stream.py`): routed by the same `dispatch` step as HTTP/1, then run
through the route's filters and opened on the cluster, whose pool may speak either protocol.
Route timeouts of the streams ride on the connection's deadline (the earliest `due`).

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
from typing import TYPE_CHECKING, Final, cast

from tulle.dataplane.http.facts import ConnectionFacts, facts_for
from tulle.dataplane.http.port import StreamConn
from tulle.dataplane.http.stream import request_clock
from tulle.dataplane.listeners.context import RoutedConnection, reset
from tulle.dataplane.listeners.h2exchange import H2Exchange
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.protocols.h2common import (
    NO_ERROR,
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
    RequestReceived,
    ResetReceived,
    SendDrained,
    StreamRejected,
)
from tulle.dataplane.protocols.h2guard import GuardLimits

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead
    from tulle.dataplane.routing.router import Router

log: Final = logging.getLogger("tulle.proxy")


def limits_for(ctx: ListenerContext) -> H2Limits:
    hw = ctx.high_water
    st = ctx.settings
    stream_window, connection_window = windows_for(hw)
    return H2Limits(max_header_bytes=ctx.max_header_bytes, stream_window=stream_window,
                    connection_window=connection_window, high_water=hw,
                    max_concurrent_streams=st.http2_max_concurrent_streams,
                    guard=GuardLimits(burst=st.http2_control_frame_burst,
                                      rate=float(st.http2_control_frame_rate),
                                      max_queued_control=st.http2_max_queued_control_frames,
                                      max_premature_resets=st.http2_max_premature_resets))


class H2Downstream(StreamConn, asyncio.Protocol, RoutedConnection):
    """A client connection speaking HTTP/2."""

    # `RoutedConnection`'s attributes are `StreamConn`'s fields: compiled, this class and its
    # requests read them directly (ADR 0072, ADR 0074, ADR 0075).

    def __init__(self, handle: ListenerHandle, peer_ip: str = "", initial: bytes = b"",
                 router: Router | None = None, cluster: str | None = None) -> None:
        self.sni = ""  # (the base's class default, which a compiled field does not see)
        self.header_from = 0.0
        self.refused = ""
        self.init_routing(handle, router, cluster)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer_ip = peer_ip
        self.facts = ConnectionFacts(handle.name, "")
        """Replaced by the transport's facts in `connection_made`."""
        self.codec = new_codec(client_side=False, limits=limits_for(self.ctx),
                                now=self.loop.time())
        self.exchanges: dict[int, H2Exchange] = {}
        self._initial = initial
        self.guard = handle.guard
        self.goaway_sent = False
        self.noticed = False
        """A shutdown notice went (`notice_drain`): the final GOAWAY has not."""
        self.write_paused = False
        """Never set: HTTP/2 flow control is per stream (the codec's queue and windows)."""
        self.closing = False
        self.deadline = 0.0
        self.deadline_kind = ""
        self._got_request = False
        self._write_pending = False

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
        self.set_first_header_deadline()
        if self.handle.draining:  # (accepted while the proxy is leaving: ADR 0113)
            self.notice_drain()
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
                            self.facts.peer_ip.decode(errors="replace"), exc.kind,
                            exc.detail)
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
                if ex is None or ex.received(ev.data, ev.flow_length):
                    self.codec.ack(ev.stream_id, ev.flow_length)
            elif isinstance(ev, RequestReceived):
                self._on_request(ev.stream_id, ev.head, ev.end_stream)
            elif isinstance(ev, EndReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.request_end(ev.trailers)
            elif isinstance(ev, SendDrained):
                ex = exchanges.get(ev.stream_id)
                if ex is not None and ex.resp_paused:
                    ex.resp_paused = False
                    if ex.upstream is not None:
                        ex.upstream.resume_response()
                elif not exchanges:
                    self._maybe_close()
            elif isinstance(ev, ResetReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex.downstream_reset()
            elif isinstance(ev, StreamRejected):
                self.ctx.protocol_error(ev.kind)
                self._got_request = True
                if ev.status == 0:
                    continue  # malformed: the codec reset it with PROTOCOL_ERROR
                ex = H2Exchange(self, ev.stream_id, None, ev.end_stream, request_clock())
                exchanges[ev.stream_id] = ex
                ex.send_local(ev.status, ev.detail.encode() + b"\n")
            elif isinstance(ev, GoAwayReceived):
                self.start_drain()

    def _on_request(self, sid: int, head: RequestHead, end: bool) -> None:
        self._got_request = True
        if self.goaway_sent:
            self.codec.reset(sid, REFUSED_STREAM)
            return
        if self.deadline_kind != "request":  # (a request's deadline stays armed)
            self.deadline = 0.0
            self.deadline_kind = ""
        ex = H2Exchange(self, sid, head, end, request_clock())
        self.exchanges[sid] = ex
        ex.dispatch()

    def _request_deadlines(self, now: float) -> None:
        """Time out the streams whose route timeout passed; watch for the next one."""
        nxt = 0.0
        for ex in list(self.exchanges.values()):
            due = ex.due
            if not due or ex.done:
                continue
            if due <= now:
                ex.due = 0.0
                ex.on_timeout()
            elif not nxt or due < nxt:
                nxt = due
        if nxt:
            self.deadline = nxt
            self.deadline_kind = "request"

    def exchange_done(self, ex: H2Exchange) -> None:
        self.exchanges.pop(ex.sid, None)
        if not self.exchanges:
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.exchanges:
            return
        if self.goaway_sent or self.handle.draining:
            if self.codec.idle and not (self.noticed and not self.goaway_sent):
                self._close()
            return
        self.set_deadline("idle")

    def _reset_all(self) -> None:
        for ex in list(self.exchanges.values()):
            ex.downstream_reset()
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
        kind = self.deadline_kind
        self.deadline = 0.0
        self.deadline_kind = ""
        if self.exchanges:
            self._request_deadlines(now)
            return
        if kind == "header" and not self._got_request:
            self.ctx.protocol_error("header_timeout")
        self.start_drain()

    def notice_drain(self) -> None:
        """The proxy is leaving but still serves (ADR 0113): a GOAWAY whose last stream is the
        highest possible, so the client opens no stream here any more while every stream it
        sent, even one crossing this frame, is served (Envoy's drain does the same, RFC 9113
        6.8).  The connection stays until `start_drain` sends the final GOAWAY."""
        if not self.goaway_sent and not self.noticed and self.transport is not None:
            self.noticed = True
            self.codec.shutdown_notice()
            self.write_out()

    def ending(self) -> bool:
        return self.closing or self.goaway_sent

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
