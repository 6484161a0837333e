"""One stream on a downstream HTTP/2 connection: the request stream's HTTP/2 port.

`H2Exchange` is a `RequestStream` (`http/stream.py`): routing decision, filters, deadline,
upstream exchange and record are there.  What is left here is HTTP/2: a response goes out as
frames through the connection's codec, gathered into one write per loop turn (`write_soon`);
a local reply is a small text response, or a trailers-only response with `grpc-status` for a
gRPC request; a response that cannot be finished is RST_STREAM(INTERNAL_ERROR) on this stream
alone; and flow control is the stream's window: request body is acknowledged (the client's
window reopened) only once the upstream took it, so body held while the filters or the
upstream are not ready is bounded by the window the client was given.  A gRPC call, once
recorded, is also judged by the gRPC status it ended with, for `tulle stat`
(`RequestStats.count_grpc`, ADR 0112): only gRPC calls pay it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tulle.dataplane.exchange import OVERLOADED, RequestHead
from tulle.dataplane.http.stream import RequestStream
from tulle.dataplane.protocols.h2common import INTERNAL_ERROR, NO_ERROR
from tulle.dataplane.protocols.h2translate import (
    encode_response,
    grpc_trailers_only,
    is_grpc,
    local_grpc_status,
)

if TYPE_CHECKING:
    from tulle.dataplane.exchange import Headers, ResponseHead, TunnelStream
    from tulle.dataplane.http.filter import ReplyHeaders
    from tulle.dataplane.listeners.http2 import H2Downstream

REJECTED: Final = RequestHead(b"", b"", b"", b"", [])
"""The head of a stream refused before it had a usable one (never routed, never changed)."""


class H2Exchange(RequestStream):
    """One stream on a downstream HTTP/2 connection (the upstream's `ResponseSink`)."""

    __slots__ = ("down", "grpc", "resp_paused", "sid", "unacked", "upstream_paused")

    def __init__(self, conn: H2Downstream, sid: int, head: RequestHead | None, end: bool,
                 start: float) -> None:
        RequestStream.__init__(self, conn, head if head is not None else REJECTED, end, start)
        self.down = conn
        """`conn`, typed as the HTTP/2 connection it is (a subclass may not narrow an
        attribute's type when compiled with mypyc, ADR 0052)."""
        self.sid = sid
        self.grpc = head is not None and is_grpc(head)
        self.unacked = 0
        """Request body bytes received and not yet acknowledged to the client."""
        self.upstream_paused = False
        self.resp_paused = False

    # -- the port --------------------------------------------------------------------------

    def send_head(self, head: ResponseHead, end: bool) -> None:
        conn = self.down
        conn.codec.send_response(self.sid, head, end)
        conn.write_soon()

    def send_data(self, data: bytes) -> None:
        conn = self.down
        if conn.codec.send_data(self.sid, data) and self.upstream is not None:
            self.resp_paused = True
            self.upstream.pause_response()
        conn.write_soon()

    def end_response(self, trailers: Headers | None) -> None:
        self.down.codec.send_end(self.sid, trailers)
        self.down.write_soon()
        self.complete()

    def complete(self) -> None:
        """The response is complete (or abandoned): account for it and forget the stream."""
        if self.done:
            return
        conn = self.down
        up = self.upstream
        self.upstream = None
        if up is not None and not self.request_done:
            up.reset()  # an early response: the upstream need not read the rest either
        if not self.request_done and conn.codec.pending(self.sid) == 0:
            # RFC 9113 8.1: a complete response ends the exchange; the rest of the body is moot.
            conn.codec.reset(self.sid, NO_ERROR)
            conn.write_soon()
        if self.unacked:
            conn.codec.ack(self.sid, self.unacked)
            self.unacked = 0
        self.record()
        if self.grpc:  # a call's gRPC status decides its success in `tulle stat` (ADR 0112)
            stats = self.stats or conn.ctx.stats(self.cluster)
            stats.count_grpc(self.status, self.flags, self.grpc_status)
        conn.exchange_done(self)

    def send_local(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        self.status = status
        self.head_sent = True
        codec = self.down.codec
        if self.grpc:
            detail = body.decode("latin-1").rstrip("\n")
            codec.send_headers(self.sid, grpc_trailers_only(status, detail, headers), True)
            self.grpc_status = str(local_grpc_status(status, headers))  # what was sent
        elif codec.send_headers(self.sid, [
                (b":status", b"%d" % status), (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(body)), *headers], False):
            codec.send_data(self.sid, body)
            codec.send_end(self.sid)
        self.down.write_soon()
        self.complete()

    def send_reset(self) -> None:
        self.down.codec.reset(self.sid, INTERNAL_ERROR)
        self.down.write_soon()
        self.complete()

    def overloaded(self) -> None:
        self.send_local(503, b"overloaded\n", OVERLOADED)
        self.down.start_drain()  # GOAWAY: the client stops opening streams here

    def resume_request(self) -> None:
        """The held body went upstream: reopen the client's window for it."""
        if self.unacked and not self.upstream_paused:
            n, self.unacked = self.unacked, 0
            self.down.codec.ack(self.sid, n)
        self.down.write_soon()

    # -- ResponseSink: what only HTTP/2 has --------------------------------------------------

    def on_informational(self, head: ResponseHead) -> None:
        if not self.done and head.status != 101:
            self.down.codec.send_headers(self.sid, encode_response(head), False)
            self.down.write_soon()

    def on_read_end(self) -> None:
        pass  # HTTP/2 writes are already gathered per loop turn (`write_soon`)

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        stream.close()  # HTTP/2 requests never ask for an upgrade; treat as a broken upstream
        self.upstream = None
        self.flags = "UPE"
        self.reply_local(502, b"unexpected upgrade from upstream\n")

    def pause_request_body(self) -> None:
        self.upstream_paused = True

    def resume_request_body(self) -> None:
        self.upstream_paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            self.down.codec.ack(self.sid, n)
            self.down.write_soon()

    # -- the connection's side -----------------------------------------------------------------

    def received(self, data: bytes, flow_length: int) -> bool:
        """DATA from the client; True when its window may be reopened for it now."""
        self.request_data(data)
        if self.done:
            return True
        if self.upstream is None or self.upstream_paused:
            self.unacked += flow_length  # held, or the upstream pushes back
            return False
        return True
