"""HTTP/1.1 codec: bytes in, calls on a handler out; heads serialised back to bytes.  No I/O.

Rules of this module:

1. Parsing is llhttp (httptools) in strict mode: CL+TE, duplicate Content-Length, obs-fold,
   bare LF, invalid header bytes and a Transfer-Encoding whose last coding is not chunked are
   rejected by the parser itself and surface here as `ProtocolError(400)`.  We add what llhttp
   cannot know: header-size limits (431), a required single Host (400), versions other than
   1.0/1.1 (400 for 0.9, 505 above), and what a re-framing proxy cannot carry: CONNECT and
   transfer codings other than a lone `chunked` (501).  Both are checked before the head is
   handed on, so no request the proxy rejects ever reaches an upstream.
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

from collections.abc import Sequence
from typing import Protocol

import httptools

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead

HeaderSeq = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
})


class ProtocolError(Exception):
    """Bad bytes from a peer.  `status` is what a downstream client should get; `kind` is the
    metric label."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


_COMMON_TOKENS: dict[bytes, frozenset[bytes]] = {
    v: frozenset({v.lower()}) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close",
                                         b"upgrade", b"Upgrade")
}
_NOT_HEADERS = frozenset({b"keep-alive", b"close", b"upgrade", b"te", b"proxy-connection",
                          b"transfer-encoding", b"content-length", b"host"})
"""Connection tokens that name no header we remove: already hop-by-hop, an option, or a framing
field.  `Connection: content-length` (or `host`, `transfer-encoding`) is ignored, as nginx,
HAProxy and Envoy do: framing is the proxy's own (rule 2), so no peer can talk it out of it."""


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    common = _COMMON_TOKENS.get(value)
    if common is not None:
        return common
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_NO_TOKENS: frozenset[bytes] = frozenset()


# What on_headers_complete does with a header, by lower-case name; absent: forward as is.
_HOST, _CL, _TE, _CONN, _EXPECT, _UPGRADE, _DROP = range(7)
_REQUEST_SPECIAL = {b"host": _HOST, b"content-length": _CL, b"transfer-encoding": _TE,
                    b"connection": _CONN, b"expect": _EXPECT, b"upgrade": _UPGRADE,
                    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP}
_RESPONSE_SPECIAL = {b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONN,
                     b"upgrade": _UPGRADE, b"keep-alive": _DROP, b"proxy-connection": _DROP,
                     b"te": _DROP}


def _reraise(exc: Exception, status: int, kind: str, default: str) -> ProtocolError:
    """Map an httptools error: a callback's own exception wins (ours or a bug), else `kind`."""
    ctx = exc.__context__
    if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(ctx, Exception):
        raise ctx from None
    return ProtocolError(status, kind, str(exc) or default)


class RequestHandler(Protocol):
    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None: ...

    def on_request_body(self, data: bytes) -> None: ...

    def on_request_end(self, trailers: Headers | None) -> None: ...


class RequestCodec:
    """Parses a stream of pipelined requests.  After `feed` raises, the codec must not be fed."""

    __slots__ = ("_chunked", "_cl", "_done_head", "_fed", "_feed_start", "_handler",
                 "_head_bytes", "_headers", "_in_message", "_limit", "_msg_start", "_parser",
                 "_scheme", "_trailers", "_url", "upgrade_offset_data")

    def __init__(self, handler: RequestHandler, max_header_bytes: int,
                 scheme: bytes = b"http") -> None:
        self._handler = handler
        self._limit = max_header_bytes
        self._scheme = scheme
        self._parser = httptools.HttpRequestParser(self)
        self._head_bytes = 0
        self._fed = 0
        """Bytes fed so far, the current `feed` call's included."""
        self._feed_start = 0
        """`_fed` before the current `feed` call."""
        self._msg_start = 0
        """`_feed_start` of the call in which the current message began: its head is at most
        `_fed - _msg_start` bytes, so the exact size is summed only when that exceeds the
        limit."""
        self._in_message = False
        self._done_head = False
        self._url = b""
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._cl: int | None = None
        self._chunked = False
        self.upgrade_offset_data: bytes | None = None
        """After an upgrade request: the bytes that followed its head (tunnel payload)."""

    @property
    def waiting_for_head(self) -> bool:
        """True between requests and inside a head: what the header timeout watches."""
        return not self._done_head

    @property
    def head_started(self) -> bool:
        return self._in_message and not self._done_head

    def feed(self, data: bytes) -> None:
        n = len(data)
        start = self._feed_start = self._fed
        self._fed = start + n
        if not self._done_head:
            self._head_bytes += n
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.upgrade_offset_data = data[offset:]
            return
        except httptools.HttpParserError as exc:
            raise _reraise(exc, 400, "malformed_request", "malformed request") from None
        if not self._done_head and self._head_bytes > self._limit + 4:
            raise ProtocolError(431, "header_too_large",
                                f"request head exceeds {self._limit} bytes")

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._msg_start = self._feed_start
        self._in_message = True
        self._done_head = False
        self._url = b""
        self._headers = []
        self._trailers = None
        self._cl = None
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limit:
            raise ProtocolError(431, "header_too_large", "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done_head:  # chunked trailers
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name.lower(), value))
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        limit = self._limit
        if (self._fed - self._msg_start > limit
                and len(self._url) + sum(len(n) + len(v) + 4 for n, v in self._headers) > limit):
            raise ProtocolError(431, "header_too_large", f"request head exceeds {limit} bytes")
        self._done_head = True
        method: bytes = p.get_method()
        raw_version: str = p.get_http_version()
        version = _VERSIONS.get(raw_version) or raw_version.encode()
        if version not in (b"1.1", b"1.0"):
            if version < b"1.0":
                raise ProtocolError(400, "malformed_request", "HTTP/0.9 is not supported")
            raise ProtocolError(505, "unsupported", f"HTTP/{version.decode()} over HTTP/1 framing")
        hosts: list[bytes] = []
        conn_tokens = _NO_TOKENS
        out: Headers = []
        append = out.append
        special = _REQUEST_SPECIAL.get
        cl: int | None = None
        expect = False
        upgrade = b""
        chunked = False
        for raw_name, value in self._headers:
            name = raw_name.lower()
            what = special(name)
            if what is None:
                append((name, value))
            elif what == _HOST:
                hosts.append(value)
            elif what == _CL:
                cl = int(value)  # llhttp has checked the digits and rejected duplicates
            elif what == _TE:
                if chunked or value.strip().lower() != b"chunked":
                    # llhttp took "gzip, chunked"; we strip and re-create framing, so a coding
                    # other than chunked would reach the upstream undone (RFC 9112 6.1: 501).
                    raise ProtocolError(501, "unsupported", "transfer coding other than chunked")
                chunked = True
            elif what == _CONN:
                tokens = _COMMON_TOKENS.get(value) or _connection_tokens(value)
                conn_tokens = conn_tokens | tokens if conn_tokens else tokens
            elif what == _EXPECT:
                if value.strip().lower() == b"100-continue":
                    expect = True
                else:
                    append((name, value))
            elif what == _UPGRADE:
                upgrade = value.strip()
        if conn_tokens and not conn_tokens <= _NOT_HEADERS:
            named = conn_tokens - _NOT_HEADERS
            out = [(n, v) for n, v in out if n not in named]
        if chunked:
            cl = None  # (llhttp refuses CL with TE; never let both describe one body)
        if len(hosts) > 1:
            raise ProtocolError(400, "malformed_request", "more than one Host header")
        url = self._url
        authority = hosts[0] if hosts else b""
        if method == b"CONNECT":
            raise ProtocolError(501, "unsupported", "CONNECT is not supported")
        if url[:1] != b"/" and url != b"*":
            # absolute-form (RFC 9112 3.2.2): the authority in the target wins over Host.
            scheme, sep, rest = url.partition(b"://")
            if not sep or scheme.lower() not in (b"http", b"https"):
                raise ProtocolError(400, "malformed_request", "invalid request target")
            auth, slash, path = rest.partition(b"/")
            authority = auth
            url = slash + path if slash else b"/"
        if not authority and version == b"1.1":
            raise ProtocolError(400, "malformed_request", "missing Host header")
        if b"upgrade" not in conn_tokens:
            upgrade = b""
        self._cl = cl
        self._chunked = chunked
        head = RequestHead(method, url, authority, self._scheme, out, cl, version, upgrade)
        has_body = chunked or (cl is not None and cl > 0)
        self._handler.on_request_head(head, has_body, p.should_keep_alive(),
                                      expect and version == b"1.1")

    def on_body(self, body: bytes) -> None:
        self._handler.on_request_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._head_bytes = 0
        self._handler.on_request_end(self._trailers)
        self._done_head = False


class ResponseHandler(Protocol):
    def on_head(self, head: ResponseHead, end_stream: bool, keep_alive: bool) -> None: ...

    def on_informational(self, head: ResponseHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self, trailers: Headers | None) -> None: ...

    def on_upgrade(self, head: ResponseHead, rest: bytes) -> None: ...


class ResponseCodec:
    """Parses the responses of one upstream connection, one exchange at a time."""

    __slots__ = ("_done_head", "_handler", "_head_bytes", "_head_request", "_headers",
                 "_keep_alive", "_limit", "_parser", "_reason", "_state", "_trailers",
                 "_until_close", "_upgrade_head", "_upgrade_request")

    IDLE, HEAD, BODY, DONE = range(4)

    def __init__(self, handler: ResponseHandler, max_header_bytes: int) -> None:
        self._handler = handler
        self._limit = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._state = self.IDLE
        self._head_request = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._trailers: Headers | None = None
        self._head_bytes = 0
        self._until_close = False
        self._keep_alive = True
        self._done_head = False
        self._upgrade_head: ResponseHead | None = None
        self._upgrade_request = False

    def start(self, head_request: bool, upgrade_request: bool = False) -> None:
        """Expect the response to a request just sent (HEAD responses carry no body; only an
        upgrade request may be answered with 101)."""
        if self._state == self.DONE and self._head_request:
            # llhttp believed a HEAD response's Content-Length; start a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
        self._state = self.HEAD
        self._head_request = head_request
        self._upgrade_request = upgrade_request
        self._head_bytes = 0
        self._until_close = False

    @property
    def until_close(self) -> bool:
        """The body in progress is delimited by the connection closing."""
        return self._state == self.BODY and self._until_close

    def feed(self, data: bytes) -> None:
        if self._state != self.BODY:
            if self._state in (self.IDLE, self.DONE):
                if data:
                    raise ProtocolError(502, "upstream_protocol",
                                        "upstream sent bytes with no request outstanding")
                return
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            head = self._upgrade_head
            self._state = self.DONE
            if head is not None:
                self._handler.on_upgrade(head, data[offset:])
            return
        except httptools.HttpParserError as exc:
            raise _reraise(exc, 502, "upstream_protocol", "malformed response") from None
        if self._state == self.HEAD and self._head_bytes > self._limit + 4:
            raise ProtocolError(502, "upstream_protocol", "response head too large")

    def feed_eof(self) -> bool:
        """The connection closed cleanly (FIN, not RST).  True when that completed a
        close-delimited body; the caller ends the exchange (the handler is not called)."""
        if self._state == self.BODY and self._until_close:
            self._state = self.DONE
            return True
        return False

    def on_message_begin(self) -> None:
        if self._state != self.HEAD:
            raise ProtocolError(502, "upstream_protocol", "response with no request outstanding")
        self._headers = []
        self._reason = b""
        self._trailers = None
        self._done_head = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done_head:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name.lower(), value))
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._state != self.HEAD:
            return
        p = self._parser
        status: int = p.get_status_code()
        self._done_head = True
        cl: int | None = None
        chunked = False
        conn_tokens = _NO_TOKENS
        out: Headers = []
        append = out.append
        special = _RESPONSE_SPECIAL.get
        for raw_name, value in self._headers:
            name = raw_name.lower()
            what = special(name)
            if what is None:
                append((name, value))
            elif what == _CL:
                cl = int(value)
            elif what == _TE:
                if value.strip().lower() != b"chunked":
                    raise ProtocolError(502, "upstream_protocol",
                                        "transfer coding other than chunked")
                chunked = True
            elif what == _CONN:
                tokens = _COMMON_TOKENS.get(value) or _connection_tokens(value)
                conn_tokens = conn_tokens | tokens if conn_tokens else tokens
            elif what == _UPGRADE and status == 101:
                append((name, value))
        if conn_tokens and not conn_tokens <= _NOT_HEADERS:
            named = conn_tokens - _NOT_HEADERS
            out = [(n, v) for n, v in out if n not in named]
        if chunked:
            cl = None
        head = ResponseHead(status, out, self._reason, cl)
        if status == 101:
            if not self._upgrade_request:
                raise ProtocolError(502, "upstream_protocol", "101 to a request without Upgrade")
            self._upgrade_head = head
            return
        if status < 200:
            self._handler.on_informational(head)
            return
        self._keep_alive = p.should_keep_alive()
        no_body = self._head_request or status in (204, 304) or cl == 0
        self._until_close = not no_body and cl is None and not chunked
        if no_body:
            self._state = self.DONE
            self._handler.on_head(head, True, self._keep_alive)
            self._handler.on_end(None)
            return
        self._state = self.BODY
        self._handler.on_head(head, False, self._keep_alive)

    def on_body(self, body: bytes) -> None:
        if self._state == self.BODY:
            self._handler.on_body(body)

    def on_message_complete(self) -> None:
        if self._state == self.BODY:
            self._state = self.DONE
            self._handler.on_end(self._trailers)


# -- serialisation ---------------------------------------------------------------------

_REASONS = {
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
# joined as they are: `b": ".join` of each pair, one `b"\r\n".join` (the fastest spelling we
# measured; this runs twice per proxied request).

def serialize_request_head(head: RequestHead, chunked: bool, extra: HeaderSeq = ()) -> bytes:
    """Request line and headers for an HTTP/1.1 upstream.  `extra` goes after the head's own.

    The framing is ours (rule 2): `transfer-encoding: chunked` when `chunked`, else
    `content-length` from `head.content_length` when the body length is known; with neither the
    request has no body."""
    lines = [b"%b %b HTTP/1.1\r\nhost: %b" % (head.method, head.path, head.authority)]
    lines += [b": ".join(h) for h in head.headers]
    if extra:
        lines += [b": ".join(h) for h in extra]
    if head.upgrade:
        lines.append(b"connection: upgrade\r\nupgrade: %b" % head.upgrade)
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n\r\n")
    elif head.content_length is not None:
        lines.append(b"content-length: %d\r\n\r\n" % head.content_length)
    else:
        lines.append(b"\r\n")
    return b"\r\n".join(lines)


def serialize_response_head(head: ResponseHead, *, chunked: bool, close: bool,
                            extra: HeaderSeq = ()) -> bytes:
    """Status line and headers for an HTTP/1.1 downstream.

    Framing as for requests: `chunked`, else `content-length` from `head.content_length` (kept
    for HEAD and 304 answers, where it describes the representation; never on 1xx or 204, RFC
    9110 8.6), else the body is close-delimited and the caller passes `close`."""
    status = head.status
    lines = [b"HTTP/1.1 %d %b" % (status, head.reason or _REASONS.get(status, b""))]
    lines += [b": ".join(h) for h in head.headers]
    if extra:
        lines += [b": ".join(h) for h in extra]
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    elif head.content_length is not None and status >= 200 and status != 204:
        lines.append(b"content-length: %d" % head.content_length)
    lines.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"\r\n".join(lines)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Headers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


def local_response(status: int, body: bytes, *, close: bool, extra: HeaderSeq = ()) -> bytes:
    """A response the proxy makes itself (errors, 404 for no route)."""
    head = ResponseHead(status, [(b"content-type", b"text/plain; charset=utf-8")],
                        content_length=len(body))
    return serialize_response_head(head, chunked=False, close=close, extra=extra) + body
