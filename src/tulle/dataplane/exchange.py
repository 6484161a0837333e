"""The seam between downstream protocol drivers and upstream connection pools.

A request travels as an *exchange*: the downstream driver (HTTP/1 or HTTP/2 listener) parses a
request head, the dispatcher routes it and opens an `UpstreamStream` on a pool (HTTP/1 or HTTP/2
upstream), and from then on bytes flow through two small interfaces:

    downstream driver --(UpstreamStream: send_data / send_end / reset)--> upstream pool
    downstream driver <--(ResponseSink: on_response_* / on_upstream_error)-- upstream pool

Either side can be HTTP/1 or HTTP/2, so HTTP/1 <-> HTTP/2 translation needs nothing more than
these values.  Heads carry lower-case header names as bytes, hop-by-hop headers already removed,
and no framing fields at all: the body's length is `content_length` (None: unknown) and nothing
else; neither Content-Length nor Transfer-Encoding is ever in `headers`.  Every serialiser
(HTTP/1 and HTTP/2) writes the framing it sends from `content_length`, so what the proxy sends
is framed by what it knows, never by a header that did or did not survive on the way.

Flow control is explicit: a side that cannot take more asks the other to stop
(`pause_request_body` / `pause_response`) and later to go on.
"""

from __future__ import annotations

from typing import Final, Protocol

Headers = list[tuple[bytes, bytes]]


class RequestHead:
    """A request as both protocols see it (HTTP/2 pseudo-headers are the first four fields)."""

    __slots__ = ("authority", "content_length", "headers", "method", "path", "scheme",
                 "upgrade", "version")

    def __init__(self, method: bytes, path: bytes, authority: bytes, scheme: bytes,
                 headers: Headers, content_length: int | None = None,
                 version: bytes = b"1.1", upgrade: bytes = b"") -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers
        self.content_length = content_length
        """Declared body length, or None when unknown (chunked / HTTP/2 without one)."""
        self.version = version
        """b"1.0", b"1.1" or b"2": what the downstream spoke."""
        self.upgrade = upgrade
        """The Upgrade token (e.g. b"websocket") of an HTTP/1 upgrade request, else empty."""


class ResponseHead:
    __slots__ = ("content_length", "headers", "reason", "status")

    def __init__(self, status: int, headers: Headers, reason: bytes = b"",
                 content_length: int | None = None) -> None:
        self.status = status
        self.headers = headers
        self.reason = reason
        self.content_length = content_length


class UpstreamError(Exception):
    """Why an upstream exchange failed, with the status the client should see.

    `flag` follows Envoy's response flags so access logs read the same:
    UF connect failure, UO overflow, UT timeout, UC connection terminated, UR reset,
    UPE upstream protocol error, NR no route, NC no cluster/endpoint, DC downstream closed.

    `retry_safe`: the upstream cannot have acted on the request, so sending it again (to the
    same or another endpoint) cannot do anything twice: the connection was never made, a limit
    refused it, or it never left on a reused connection the peer had closed (HTTP/2:
    REFUSED_STREAM, or above a GOAWAY's last stream id).  Pools never retry; the attempt layer
    and the router decide (`upstream/attempt.py`).

    `unprocessed` (default: `retry_safe`): the upstream did not process the request, though
    some of its body may have left (HTTP/2 REFUSED_STREAM, a stream above GOAWAY's last id, RFC
    9113 8.7).  Not safe for a pool to replay (the body is gone) but for the router's retry,
    which keeps the body it sent (`http/retry.py`).
    """

    def __init__(self, status: int, flag: str, detail: str, retry_safe: bool = False,
                 unprocessed: bool | None = None) -> None:
        super().__init__(f"{flag}: {detail}")
        self.status = status
        self.flag = flag
        self.detail = detail
        self.retry_safe = retry_safe
        self.unprocessed = retry_safe if unprocessed is None else unprocessed


IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""RFC 9110 9.2.2: what may be sent again without doing anything twice."""

MAX_INFORMATIONAL: Final = 5
"""1xx heads (other than 101) an upstream may send before its final answer, both protocols.
The legitimate use is 100 Continue and a few 103 Early Hints; Go's net/http refuses a sixth
("too many 1xx informational responses"), so no upstream that serves Go clients sends more.
Past it the upstream stream is reset (HTTP/2) or its connection closed (HTTP/1), the request
fails as an upstream protocol error (502, UPE), and nothing past the cap is forwarded: a flood
of them cost 777 MiB and 9.4 s of the loop for one read (ADR 0110, ADR 0115)."""

TOO_MANY_INFORMATIONAL: Final = "too many 1xx informational responses"

OVERLOADED: Final[tuple[tuple[bytes, bytes], ...]] = ((b"x-envoy-overloaded", b"true"),)
"""On a local 503 that a limit or the overload guard gave (UO, OL): a caller's retry policy
never retries it (`http/retry.RetryRuntime.status_retried`), as Envoy does with the same
header -- a sidecar shedding load got (1 + retries) times the requests from its calling
sidecar at exactly that moment (attack audit, ADR 0100)."""


def connect_failure(detail: str) -> UpstreamError:
    return UpstreamError(503, "UF", detail, retry_safe=True)


def upstream_timeout(detail: str) -> UpstreamError:
    return UpstreamError(504, "UT", detail)


def upstream_reset(detail: str) -> UpstreamError:
    return UpstreamError(502, "UC", detail)


def upstream_protocol_error(detail: str) -> UpstreamError:
    return UpstreamError(502, "UPE", detail)


class ResponseSink(Protocol):
    """What an upstream stream reports to the downstream driver that owns the exchange."""

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        """Final response head (status >= 200).  1xx heads go to on_informational."""

    def on_informational(self, head: ResponseHead) -> None:
        """A 1xx head other than 101 (e.g. 100 Continue, 103 Early Hints)."""

    def on_response_data(self, data: bytes) -> None: ...

    def on_response_end(self, trailers: Headers | None) -> None: ...

    def on_read_end(self) -> None:
        """The upstream has handled one read: a head held back to leave in one write with the
        first body bytes (usually in that same read) must leave now."""

    def on_upstream_error(self, error: UpstreamError) -> None:
        """The exchange failed.  If the head was already sent downstream, the driver resets."""

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        """101 Switching Protocols: from now on bytes flow raw through `stream`."""

    def pause_request_body(self) -> None:
        """The upstream cannot take more request body for now."""

    def resume_request_body(self) -> None: ...


class UpstreamStream(Protocol):
    """What a downstream driver may do with an exchange it opened on a pool."""

    @property
    def endpoint_key(self) -> str:
        """`address:port` of the endpoint the exchange went to."""

    def send_data(self, data: bytes) -> None: ...

    def send_end(self, trailers: Headers | None = None) -> None: ...

    def reset(self) -> None:
        """Abandon the exchange (the downstream went away); never reports back to the sink."""

    def pause_response(self) -> None:
        """The downstream cannot take more response body for now."""

    def resume_response(self) -> None: ...


class TunnelStream(Protocol):
    """A raw byte stream after an upgrade (WebSocket) or for CONNECT-like tunnels."""

    def send_data(self, data: bytes) -> None: ...

    def send_eof(self) -> None: ...

    def close(self) -> None: ...

    def pause_response(self) -> None: ...

    def resume_response(self) -> None: ...
