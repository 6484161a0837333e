"""HTTP/1.1 codec: bytes in, calls on a handler out; heads serialised back to bytes.  No I/O.

Rules of this module:

1. Parsing is llhttp (httptools) in strict mode: CL+TE, duplicate Content-Length, obs-fold,
   bare LF, invalid header bytes and a Transfer-Encoding whose last coding is not chunked are
   rejected by the parser itself and surface here as `ProtocolError(400)`.  We add what llhttp
   cannot know: header-size and header-count limits (431), a required single Host (400),
   versions other than 1.0/1.1 (400 for 0.9, 505 above), Transfer-Encoding in HTTP/1.0 (400,
   RFC 9112 6.1), a Host or absolute-form authority that is not host[:port] (400, the check
   `:authority` gets), an upgrade request with a body (400: llhttp gives it to the tunnel),
   and what a re-framing proxy cannot carry: CONNECT and transfer codings other than a lone
   `chunked` (501).  These are checked before the head is handed on, so no request
   the proxy rejects ever reaches an upstream.  Inside chunked bodies: chunk-extension length
   (400) and trailer-section size (431), and trailer fields RFC 9110 6.5.1 forbids are dropped
   (`H1Limits`, `FORBIDDEN_TRAILERS`).  An `Upgrade: h2c` is stripped (never forwarded).
2. Heads leave this module as `RequestHead` / `ResponseHead` with lower-case names, hop-by-hop
   headers removed (RFC 9110 7.6.1: Connection, the headers it names, Keep-Alive,
   Proxy-Connection, TE, Transfer-Encoding, Upgrade) and framing described only by
   `content_length`: no framing field (Content-Length, Transfer-Encoding) is ever in `headers`,
   and a `Connection` nomination of a framing field or Host is ignored.  Framing is re-created
   on the way out by `serialize_*` from `content_length` and the `chunked` decision, never from
   a header that happened to survive, so a chunked body stays chunked, a counted body stays
   counted, and a smuggling shape cannot pass through (the HTTP/2 codec keeps the same rule).
3. A codec that raised is dead; the driver answers and closes the connection.  Bad bytes
   raise `ProtocolError` and nothing else; an exception from a handler callback is re-raised as
   itself (a bug must fail loudly, not pass for a 400).
"""

from __future__ import annotations

from tulle.dataplane.protocols.h1common import (
    DEFAULT_LIMITS,
    FORBIDDEN_TRAILERS,
    HOP_BY_HOP,
    H1Limits,
    HeaderSeq,
    ProtocolError,
)
from tulle.dataplane.protocols.h1request import RequestCodec, RequestHandler
from tulle.dataplane.protocols.h1response import ResponseCodec, ResponseHandler
from tulle.dataplane.protocols.h1serialize import (
    encode_chunk,
    encode_last_chunk,
    local_response,
    reason_phrase,
    serialize_request_head,
    serialize_response_head,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FORBIDDEN_TRAILERS",
    "HOP_BY_HOP",
    "H1Limits",
    "HeaderSeq",
    "ProtocolError",
    "RequestCodec",
    "RequestHandler",
    "ResponseCodec",
    "ResponseHandler",
    "encode_chunk",
    "encode_last_chunk",
    "local_response",
    "reason_phrase",
    "serialize_request_head",
    "serialize_response_head",
]
