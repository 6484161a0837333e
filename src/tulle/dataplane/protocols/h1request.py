"""HTTP/1.1 request codec: pipelined requests in, `RequestHandler` calls out.  No I/O.

The rules it keeps (strict llhttp, limits, what is refused before a head is handed on) are in
`protocols/http1.py`; the shared tables and bounds in `h1common.py`.
"""

from __future__ import annotations

from typing import Protocol

import httptools

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.protocols.h1common import (
    _CL,
    _COMMON_TOKENS,
    _CONN,
    _EXPECT,
    _HOST,
    _NO_TOKENS,
    _NOT_HEADERS,
    _REQUEST_NAMES,
    _REQUEST_SPECIAL,
    _TE,
    _UPGRADE,
    _VERSIONS,
    DEFAULT_LIMITS,
    H1Limits,
    ProtocolError,
    _absolute_form,
    _Bounds,
    _connection_tokens,
    _reraise,
    _without_h2c,
)
from tulle.dataplane.protocols.h2fields import authority_ok


class RequestHandler(Protocol):
    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None: ...

    def on_request_body(self, data: bytes) -> None: ...

    def on_request_end(self, trailers: Headers | None) -> None: ...


class RequestCodec(_Bounds):
    """Parses a stream of pipelined requests.  After `feed` raises, the codec must not be fed;
    `close` drops the parser (which refers back to the codec) so nothing waits for the cyclic
    garbage collector."""

    __slots__ = ("_chunked", "_cl", "_done_head", "_fed", "_feed_start", "_good_host",
                 "_handler", "_head_bytes", "_headers", "_held", "_in_message", "_last_end", "_limit",
                 "_msg_start",
                 "_parser", "_resume", "_url", "head_started", "scheme", "upgrade_offset_data")

    def __init__(self, handler: RequestHandler, max_header_bytes: int,
                 scheme: bytes = b"http", *, limits: H1Limits = DEFAULT_LIMITS) -> None:
        self._handler: RequestHandler | None = handler
        self._limit = max_header_bytes
        self._set_limits(limits)
        self.scheme = scheme
        """What requests on this connection carry as their scheme (`http`, `https`)."""
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
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
        self.head_started = False
        """Part of a request head has arrived and not all of it (the header timeout's
        question); a plain attribute, read once per request by the driver."""
        self._good_host = b""
        """The last Host value found valid (see on_headers_complete)."""
        self._url = b""
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._trailer_bytes = 0
        self._cl: int | None = None
        self._chunked = False
        # Chunk-extension budget (only touched inside chunked bodies): chunk headers, body and
        # trailer bytes of the current read, and the allowance carried over from the last one.
        self._chunks = 0
        self._body_in_feed = 0
        self._ext_carry = 0
        self._ext_credit = 0
        self._ext_fields = None
        self._held: tuple[Headers | None] | None = None
        """The end of a chunked request whose read looked over the extension allowance,
        held back until the read is over: if no other request began after it in the read,
        its framing was too long and the end is never handed on."""
        self._last_end = -1
        """`_fed` of the read in which the last message ended."""
        self._resume = False
        """The request just parsed asked for an upgrade we refused (h2c): llhttp stops after
        it, and the bytes that follow are the next request."""
        self.upgrade_offset_data: bytes | None = None
        """After an upgrade request: the bytes that followed its head (tunnel payload)."""

    @property
    def waiting_for_head(self) -> bool:
        """True between requests and inside a head: what the header timeout watches."""
        return not self._done_head

    def close(self) -> None:
        """Drop the parser and the handler: the codec is done (its connection is gone)."""
        self._parser = None
        self._handler = None
        self._headers = []
        self._trailers = None

    def feed(self, data: bytes) -> None:
        n = len(data)
        start = self._feed_start = self._fed
        self._fed = start + n
        if not self._done_head:
            self._head_bytes += n
        parser = self._parser
        if parser is None:
            raise ProtocolError(400, "malformed_request", "connection closed")
        try:
            while True:
                try:
                    parser.feed_data(data)
                    break
                except httptools.HttpParserUpgrade as exc:
                    offset = exc.args[0] if exc.args else len(data)
                    if not self._resume:
                        self.upgrade_offset_data = data[offset:]
                        return
                    self._resume = False  # a refused upgrade: parse on, as plain HTTP/1.1
                    data = data[offset:]
        except httptools.HttpParserError as exc:
            raise _reraise(exc, 400, "malformed_request", "malformed request") from None
        if not self._done_head and self._head_bytes > self._limit + 4:
            raise ProtocolError(431, "header_too_large",
                                f"request head exceeds {self._limit} bytes")
        if self._held is not None:  # nothing followed the message: it was over the limit
            raise ProtocolError(400, "malformed_request", "chunk extension too long")
        if self._chunked:
            self._check_extensions(n, 400, "malformed_request")

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        held = self._held
        if held is not None:  # another request follows in this read: the excess may be its
            self._held = None
            self._handler.on_request_end(held[0])  # type: ignore[union-attr]
        self._msg_start = self._feed_start
        self._in_message = True
        self._done_head = False
        self.head_started = True
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
        # llhttp drops the whitespace before a value but keeps the whitespace after it;
        # RFC 9110 section 5.5 says neither is part of the value.  Kept, `x-debug: true `
        # was not "true" to a header match (an authorization DENY on it let the request
        # through) while the application, stripping as the RFC says, read "true".
        value = value.rstrip(b" \t")
        if self._done_head:  # chunked trailers
            self._trailer_field(name, value, 431, "header_too_large")
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        assert p is not None
        limit = self._limit
        headers = self._headers
        if (self._fed - self._msg_start > limit
                and len(self._url) + sum(len(n) + len(v) + 4 for n, v in headers) > limit):
            raise ProtocolError(431, "header_too_large", f"request head exceeds {limit} bytes")
        if len(headers) > self._max_fields:
            raise ProtocolError(431, "header_too_large",
                                f"more than {self._limits.max_header_count} header fields")
        self._done_head = True
        self.head_started = False
        method: bytes = p.get_method()
        raw_version: str = p.get_http_version()
        version = _VERSIONS.get(raw_version)
        if version is None:  # neither 1.1 nor 1.0
            version = raw_version.encode()
            if version < b"1.0":
                raise ProtocolError(400, "malformed_request", "HTTP/0.9 is not supported")
            raise ProtocolError(505, "unsupported", f"HTTP/{version.decode()} over HTTP/1 framing")
        authority = b""
        n_hosts = 0
        conn_tokens = _NO_TOKENS
        out: Headers = []
        # (The tables as typed locals, their methods called directly: compiled, each is a C
        # call per field, where a bound-method local would be a generic Python call.)
        special = _REQUEST_SPECIAL
        known = _REQUEST_NAMES
        cl: int | None = None
        expect = False
        upgrade = b""
        chunked = False
        for raw_name, value in headers:
            hit = known.get(raw_name)
            if hit is None:
                name = raw_name.lower()
                what = special.get(name)
            else:
                name, what = hit
            if what is None:
                out.append((name, value))
            elif what == _HOST:
                authority = value
                n_hosts += 1
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
                    out.append((name, value))
            elif what == _UPGRADE:
                upgrade = value.strip()
        if chunked:
            if version == b"1.0":  # RFC 9112 6.1: faulty framing, whatever else it says
                raise ProtocolError(400, "malformed_request", "Transfer-Encoding in HTTP/1.0")
            cl = None  # (llhttp refuses CL with TE; never let both describe one body)
        if conn_tokens and not conn_tokens <= _NOT_HEADERS:
            named = conn_tokens - _NOT_HEADERS
            out = [(n, v) for n, v in out if n not in named]
        if n_hosts > 1:
            raise ProtocolError(400, "malformed_request", "more than one Host header")
        url = self._url
        if method == b"CONNECT":
            raise ProtocolError(501, "unsupported", "CONNECT is not supported")
        if url[:1] != b"/" and url != b"*":
            # absolute-form (RFC 9112 3.2.2): the authority in the target wins over Host.
            url, authority = _absolute_form(url)
        else:
            if url == b"*" and method != b"OPTIONS":  # RFC 9112 3.2.4: for OPTIONS only
                raise ProtocolError(400, "malformed_request", "invalid request target")
            if authority != self._good_host:
                # Host is written upstream as is and routes the request: host[:port] only,
                # as for `:authority` (no userinfo, `/`, `?`, spaces).  The last accepted
                # value is remembered: a keep-alive connection pays for one check.
                if authority and not authority_ok(authority):
                    raise ProtocolError(400, "malformed_request", "invalid Host header")
                self._good_host = authority
        if not authority and version == b"1.1":
            raise ProtocolError(400, "malformed_request", "missing Host header")
        keep_alive = p.should_keep_alive()
        if upgrade:
            if b"upgrade" not in conn_tokens:
                upgrade = b""
            elif b"h2c" in upgrade.lower():
                upgrade = _without_h2c(upgrade)
                if not upgrade and p.should_upgrade():
                    if chunked or cl:
                        # llhttp takes the bytes after an upgrade head for the new protocol,
                        # not as its body: we cannot frame such a body as HTTP/1.1.
                        raise ProtocolError(400, "malformed_request",
                                            "h2c upgrade request with a body")
                    self._resume = True
        if upgrade and (chunked or cl):
            # llhttp hands the bytes after an upgrade head to the tunnel, not to the body: the
            # upstream would be told of a body it never gets, and eat the next request on the
            # connection as that body (smuggling past routing once the connection is pooled).
            raise ProtocolError(400, "malformed_request", "upgrade request with a body")
        self._cl = cl
        self._chunked = chunked
        if chunked:
            if self._last_end == self._fed:  # another message ended in this read
                self._start_chunked(-1, None)
            else:
                self._start_chunked(len(method) + len(self._url) + 14, self._headers)
        head = RequestHead(method, url, authority, self.scheme, out, cl, version, upgrade)
        has_body = chunked or (cl is not None and cl > 0)
        handler = self._handler
        assert handler is not None
        handler.on_request_head(head, has_body, keep_alive, expect and version == b"1.1")

    def on_body(self, body: bytes) -> None:
        if self._chunked:
            self._body_in_feed += len(body)
            self._chunks += 1
        self._handler.on_request_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self._in_message = False
        self._head_bytes = 0
        self._last_end = self._fed
        if self._chunked:
            self._chunked = False
            n = self._fed - self._feed_start
            if n - self._body_in_feed > self._ext_carry and self._ext_balance(n) < 0:
                self._held = (self._trailers,)
                self._done_head = False
                return
        self._handler.on_request_end(self._trailers)  # type: ignore[union-attr]
        self._done_head = False
