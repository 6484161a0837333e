"""HTTP/1.1 on the way out: heads serialised with the framing the proxy decided, chunks, and
local responses.  Framing comes from `content_length` and the `chunked` decision only, never
from a header (rule 2 of `protocols/http1.py`).  No I/O.
"""

from __future__ import annotations

from typing import Final

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.h1common import (
    FORBIDDEN_TRAILERS,
    HeaderSeq,
)

# -- serialisation ---------------------------------------------------------------------

_REASONS: Final = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
    204: b"No Content", 301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified",
    400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"")


# Heads never hold HTTP/2 pseudo-headers (both codecs keep them out), so header lines are
# written as they are: name, ": ", value and the line end appended to one list and joined once.
# Compiled, a plain loop of list appends is the cheapest spelling (no bytes object per field
# and no call through Python); `map` over a bound `b": ".join` was cheaper only interpreted,
# and this runs twice per proxied request (ADR 0072).


def _add_fields(out: list[bytes], fields: Headers) -> None:
    for name, value in fields:
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")


def serialize_request_head(head: RequestHead, chunked: bool, extra: HeaderSeq = ()) -> bytes:
    """Request line and headers for an HTTP/1.1 upstream.  `extra` goes after the head's own.

    The framing is ours (rule 2): `transfer-encoding: chunked` when `chunked`, else
    `content-length` from `head.content_length` when the body length is known; with neither the
    request has no body."""
    out = [b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (head.method, head.path, head.authority)]
    _add_fields(out, head.headers)
    if extra:
        _add_fields(out, list(extra))
    if head.upgrade:
        out.append(b"connection: upgrade\r\nupgrade: %b\r\n" % head.upgrade)
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n\r\n")
    elif head.content_length is not None:
        out.append(b"content-length: %d\r\n\r\n" % head.content_length)
    else:
        out.append(b"\r\n")
    return b"".join(out)


def serialize_response_head(head: ResponseHead, *, chunked: bool, close: bool,
                            extra: HeaderSeq = ()) -> bytes:
    """Status line and headers for an HTTP/1.1 downstream.

    Framing as for requests: `chunked`, else `content-length` from `head.content_length` (kept
    for HEAD and 304 answers, where it describes the representation; never on 1xx or 204, RFC
    9110 8.6), else the body is close-delimited and the caller passes `close`."""
    status = head.status
    out = [b"HTTP/1.1 %d %b\r\n" % (status, head.reason or _REASONS.get(status, b""))]
    _add_fields(out, head.headers)
    if extra:
        _add_fields(out, list(extra))
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length is not None and status >= 200 and status != 204:
        out.append(b"content-length: %d\r\n" % head.content_length)
    out.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(out)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Headers | None) -> bytes:
    """The last chunk and the trailer section, without fields trailers must not carry (the
    HTTP/1 codecs dropped them already; trailers from HTTP/2 are filtered here)."""
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers
                                if n not in FORBIDDEN_TRAILERS) + b"\r\n"


def local_response(status: int, body: bytes, *, close: bool, extra: HeaderSeq = ()) -> bytes:
    """A response the proxy makes itself (errors, 404 for no route)."""
    head = ResponseHead(status, [(b"content-type", b"text/plain; charset=utf-8")],
                        content_length=len(body))
    return serialize_response_head(head, chunked=False, close=close, extra=extra) + body
