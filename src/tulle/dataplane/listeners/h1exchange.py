"""One request on a downstream HTTP/1 connection: the request stream's HTTP/1 port.

`H1Exchange` is a `RequestStream` (`http/stream.py`), which does everything that is not HTTP/1:
routing decision, filters, deadline, the upstream exchange, the record.  What is left here is
how a response is written to an HTTP/1 client: the head serialised with the framing this client
needs (chunked for HTTP/1.1 when the length is unknown, close-delimited for HTTP/1.0, an
explicit keep-alive for a 1.0 client that asked), the head held back to leave in one write
with the first body bytes, local replies, an abort when a response cannot be finished, 1xx
heads and the switch to a tunnel on 101.  The connection (`http1.H1Downstream`) owns the queue
of exchanges and the socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tulle.dataplane.exchange import OVERLOADED
from tulle.dataplane.http.stream import RequestStream
from tulle.dataplane.protocols.http1 import (
    encode_chunk,
    encode_last_chunk,
    local_response,
    serialize_response_head,
)

if TYPE_CHECKING:
    from tulle.dataplane.exchange import Headers, ResponseHead, TunnelStream
    from tulle.dataplane.http.filter import ReplyHeaders
    from tulle.dataplane.listeners.http1 import H1Downstream

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE: Final[Headers] = [(b"connection", b"keep-alive")]
"""An HTTP/1.0 client only keeps a connection it was told to keep."""
_CLOSES: Final = frozenset((400, 408, 431, 501, 505))
"""Local replies after which the connection cannot be trusted to go on."""


class H1Exchange(RequestStream):
    """One request on a downstream HTTP/1 connection (the upstream's `ResponseSink`)."""

    __slots__ = ("chunked", "close_after", "down", "started")

    # No `__init__` of its own (one call less per request): the driver sets these four right
    # after making the exchange.
    down: H1Downstream
    """`conn`, typed as the HTTP/1 connection it is (a subclass may not narrow an attribute's
    type when compiled with mypyc, ADR 0052)."""
    close_after: bool
    """Close the connection after this response."""
    chunked: bool
    """The response is re-framed chunked (HTTP/1.1, length unknown)."""
    started: bool
    """Dispatched: it left the pipeline queue and was routed."""

    # -- the port --------------------------------------------------------------------------

    def send_head(self, head: ResponseHead, end: bool) -> None:
        conn = self.down
        if conn.drain_after or conn.handle.draining:
            self.close_after = True
        elif conn.guard.rejecting and not self.close_after:
            self.close_after = True  # overloaded: no keep-alive
            conn.guard.count("disable_keepalive")
        version = self.head.version
        bodyless = end or self.head.method == b"HEAD" or head.status in (204, 304)
        if not bodyless and head.content_length is None:
            if version == b"1.1":
                self.chunked = True
            else:
                self.close_after = True  # HTTP/1.0: the close delimits the body
        if not self.request_done:
            self.close_after = True  # an early response: we will not read the rest
        data = serialize_response_head(
            head, chunked=self.chunked, close=self.close_after,
            extra=_KEEP_ALIVE if version == b"1.0" and not self.close_after else ())
        conn.write(data)  # held to the turn's end: usually leaves with the body (ADR 0065)

    def send_data(self, data: bytes) -> None:
        conn = self.down
        if conn.tunnel is not None:
            conn.tunnel_active = conn.loop.time()
        conn.write(encode_chunk(data) if self.chunked else data)

    def end_response(self, trailers: Headers | None) -> None:
        conn = self.down
        if conn.tunnel is not None:
            conn.tunnel_eof_from_upstream()  # the upgraded tunnel's upstream half-closed
            return
        if self.chunked:
            conn.write(encode_last_chunk(trailers))
        self.record()
        conn.exchange_done(self)

    def complete(self) -> None:
        self.record()
        self.down.exchange_done(self)

    def send_local(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        self.status = status
        self.head_sent = True
        conn = self.down
        if not self.request_done or status in _CLOSES or conn.drain_after \
                or conn.handle.draining:
            self.close_after = True
        conn.write(local_response(status, body, close=self.close_after, extra=headers))
        self.complete()

    def send_reset(self) -> None:
        self.down.exchange_failed(self)

    def pause_request(self) -> None:
        self.down.pause_reading("buffer")

    def resume_request(self) -> None:
        conn = self.down
        if conn.paused:
            conn.resume_reading("buffer")

    def overloaded(self) -> None:
        self.close_after = True  # no keep-alive
        self.send_local(503, b"overloaded\n", OVERLOADED)

    def send_continue(self) -> None:
        self.down.write(CONTINUE)

    # -- ResponseSink: what only HTTP/1 has --------------------------------------------------

    def on_informational(self, head: ResponseHead) -> None:
        if head.status == 100 and self.expect_continue:
            return  # we already said 100 Continue ourselves
        if self.head.version == b"1.1":
            self.down.write(serialize_response_head(head, chunked=False, close=False))

    def on_read_end(self) -> None:
        """Nothing to do: a head held for its body's first bytes leaves with the turn's writes
        (`H1Downstream.write`, ADR 0065)."""

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        conn = self.down
        if conn.refused:
            # The listener's admission refused the connection while the upgrade was on its
            # way: a tunnel it opened now would outlive the refusal for good (the swap cuts
            # tunnels that were open, ADR 0127), so the upstream's is closed and the client
            # told why, as a request routed after the swap is (ADR 0129).
            self.upstream = None
            stream.close()
            self.refuse_unadmitted(conn.refused)
            return
        self.status = 101
        self.head_sent = True
        self.down.write(serialize_response_head(
            head, chunked=False, close=False,
            extra=[(b"connection", b"upgrade")]))
        self.down.start_tunnel(self, stream)

    def pause_request_body(self) -> None:
        self.down.pause_reading("upstream")

    def resume_request_body(self) -> None:
        self.down.resume_reading("upstream")
