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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httptools

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.h2fields import authority_ok

HeaderSeq = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
})


@dataclass(frozen=True, slots=True)
class H1Limits:
    """Per-message bounds beyond the head's byte size, built once per snapshot from `Settings`.

    Requests over a limit get 431 (fields) or 400 (framing); responses over one are an upstream
    protocol error (502)."""

    max_header_count: int = 100
    """Header fields in one head (Envoy's default); trailer fields are bounded the same way."""
    max_chunk_extension_bytes: int = 4096
    """Chunk extensions (`;name=value` after a chunk size).  Checked per read against the
    framing bytes the reads hold, so a longer one is refused within about twice this."""
    max_trailer_bytes: int = 16_384
    """Trailer section of a chunked body (names, values and line ends)."""


DEFAULT_LIMITS = H1Limits()

FORBIDDEN_TRAILERS = frozenset({
    # RFC 9110 6.5.1: framing, routing, request modifiers, authentication, response control
    # data and how to process the content must not come from trailers; 6.5.2: a recipient
    # that forwards trailers must not merge them into the header section.  We drop them.
    b"host", b"content-length", b"transfer-encoding", b"te", b"trailer", b"connection",
    b"keep-alive", b"proxy-connection", b"upgrade", b"http2-settings",
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"cookie", b"set-cookie", b"content-type", b"content-encoding", b"content-range",
    b"cache-control", b"expect", b"max-forwards", b"pragma", b"range", b"if-match",
    b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range", b"age",
    b"expires", b"date", b"location", b"retry-after", b"vary", b"warning",
})
"""Trailer fields never forwarded, in either direction (the request and response codecs drop
them on parse; `encode_last_chunk` on output, for trailers that came from HTTP/2)."""


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
                    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP,
                    b"http2-settings": _DROP}
_RESPONSE_SPECIAL = {b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONN,
                     b"upgrade": _UPGRADE, b"keep-alive": _DROP, b"proxy-connection": _DROP,
                     b"te": _DROP}


_COMMON_NAMES = (
    b"host", b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"connection",
    b"content-length", b"content-type", b"transfer-encoding", b"cookie", b"authorization",
    b"referer", b"origin", b"cache-control", b"upgrade", b"expect", b"te", b"keep-alive",
    b"pragma", b"range", b"if-none-match", b"if-modified-since", b"x-forwarded-for",
    b"x-forwarded-proto", b"x-request-id", b"server", b"date", b"last-modified", b"etag",
    b"accept-ranges", b"expires", b"vary", b"location", b"set-cookie", b"content-encoding",
)
_EXTRA_SPELLINGS = {b"etag": b"ETag", b"te": b"TE"}


def _known_names(special: dict[bytes, int]) -> dict[bytes, tuple[bytes, int | None]]:
    """Common field names as peers spell them (lower case, Title-Case) -> (lower-case name,
    what on_headers_complete does with it): a hit saves `lower()` and hashing its result; a
    miss (any other spelling) takes the general path.  Static: built once, never grows."""
    table: dict[bytes, tuple[bytes, int | None]] = {}
    for name in _COMMON_NAMES:
        entry = (name, special.get(name))
        title = b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))
        for spelling in (name, title, _EXTRA_SPELLINGS.get(name, name)):
            table[spelling] = entry
    return table


_REQUEST_NAMES = _known_names(_REQUEST_SPECIAL)
_RESPONSE_NAMES = _known_names(_RESPONSE_SPECIAL)


def _reraise(exc: Exception, status: int, kind: str, default: str) -> Exception:
    """Map an httptools error: a callback's own exception wins (ours or a bug), else `kind`.

    Returned, not raised, and raised by the caller as `raise _reraise(...) from None`: an
    exception raised here would hold this frame in its traceback while this frame holds the
    exception (a reference cycle that kept every rejected head alive until the cyclic
    collector ran)."""
    ctx = exc.__context__
    if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(ctx, Exception):
        exc.__context__ = None
        return ctx
    return ProtocolError(status, kind, str(exc) or default)


def _absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """(origin-form target, authority) of an absolute-form target (RFC 9112 3.2.2): the
    authority ends at the first `/` or `?` (RFC 3986 3.2; llhttp refuses `#`) and must be a
    non-empty host[:port], as `:authority` must (no userinfo)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise ProtocolError(400, "malformed_request", "invalid request target")
    end = len(rest)
    for delimiter in (b"/", b"?"):
        i = rest.find(delimiter, 0, end)
        if i >= 0:
            end = i
    authority, tail = rest[:end], rest[end:]
    if not authority_ok(authority):
        raise ProtocolError(400, "malformed_request", "invalid authority in request target")
    return (tail if tail[:1] == b"/" else b"/" + tail), authority


class RequestHandler(Protocol):
    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None: ...

    def on_request_body(self, data: bytes) -> None: ...

    def on_request_end(self, trailers: Headers | None) -> None: ...


_EXT_SLACK = 24
"""Framing bytes of one chunk besides its extension: up to 16 hex digits, `;`, two CRLFs."""


def _without_h2c(upgrade: bytes) -> bytes:
    """The Upgrade tokens other than h2c: an h2c upgrade is never forwarded (h2c smuggling
    would tunnel a second HTTP/2 connection past every route); the request goes on as plain
    HTTP/1.1."""
    return b", ".join(t.strip() for t in upgrade.split(b",")
                      if t.strip() and t.strip().lower() != b"h2c")


class _Bounds:
    """What both codecs check beyond llhttp: chunk-extension length and the trailer section."""

    __slots__ = (
        "_body_in_feed",
        "_chunks",
        "_ext_cap",
        "_ext_carry",
        "_ext_credit",
        "_ext_fields",
        "_ext_step",
        "_limits",
        "_max_fields",
        "_trailer_bytes",
        "_trailers",
    )

    _limits: H1Limits
    _max_fields: int
    _ext_step: int
    """Allowance per chunk: `max_chunk_extension_bytes` plus the size line."""
    _ext_cap: int
    """Allowance carried over between reads at most: one chunk's plus the trailer section's."""
    _trailers: Headers | None
    _chunks: int
    """Pieces of chunked body llhttp handed on in this read: at least one per chunk with data
    (a chunk split over reads counts once per read, which only carries allowance over, capped;
    the last, empty chunk's line is within the slack).  Counted in `on_body` rather than with
    an `on_chunk_header` callback: one Python call less per chunk."""
    _body_in_feed: int
    _ext_carry: int
    _ext_credit: int
    """Bytes of heads that ended in the current read (not framing); -1: unknown, the read
    also held other messages, so it is not checked (at most one read goes unchecked)."""
    _ext_fields: Headers | None
    """The fields of a head that ended in the current read, summed into the credit only when
    the read looks over the allowance without them (the common case never sums them)."""
    _trailer_bytes: int

    def _set_limits(self, limits: H1Limits) -> None:
        self._limits = limits
        self._max_fields = limits.max_header_count
        self._ext_step = limits.max_chunk_extension_bytes + _EXT_SLACK
        self._ext_cap = self._ext_step + limits.max_trailer_bytes

    def _check_extensions(self, n: int, status: int, kind: str) -> None:
        """Framing bytes of this read (all but body bytes) against what its chunks allow:
        each chunk `max_chunk_extension_bytes` plus its size line, the trailer section
        `max_trailer_bytes` once.  Allowance carries over between reads only up to one chunk's
        plus the trailers', so extension bytes average at most the limit per chunk over a
        body, and an extension spread over reads is refused within about twice the limit
        plus the trailer limit (one read full of small chunks can lend it more, never more
        than that read).  llhttp reports extensions to no callback httptools exposes, so we
        count what is left."""
        balance = self._ext_balance(n)
        if balance < 0:
            raise ProtocolError(status, kind, "chunk extension too long")
        cap = self._ext_cap
        self._ext_carry = balance if balance < cap else cap
        self._chunks = self._body_in_feed = self._ext_credit = 0
        self._ext_fields = None

    def _ext_balance(self, n: int) -> int:
        """Allowance left if the read's `n` bytes were all this message's (< 0: over)."""
        credit = self._ext_credit
        if credit < 0:
            return self._ext_carry
        step = self._ext_step
        balance = self._ext_carry + self._chunks * step + credit - (n - self._body_in_feed)
        fields = self._ext_fields
        if balance < 0 and fields is not None:
            balance += sum(len(k) + len(v) + 4 for k, v in fields)
        return balance

    def _start_chunked(self, head_bytes: int, fields: Headers | None) -> None:
        """A chunked body begins; its head, `head_bytes` plus `fields` (-1: unknown), is in
        this read."""
        self._ext_carry = self._ext_cap
        self._ext_credit = head_bytes if head_bytes < 0 or self._ext_credit < 0 else (
            self._ext_credit + head_bytes)
        self._ext_fields = fields
        self._chunks = self._body_in_feed = self._trailer_bytes = 0

    def _trailer_field(self, name: bytes, value: bytes, status: int, kind: str) -> None:
        size = self._trailer_bytes = self._trailer_bytes + len(name) + len(value) + 4
        if self._trailers is None:
            self._trailers = []
        limits = self._limits
        if size > limits.max_trailer_bytes or len(self._trailers) >= limits.max_header_count:
            raise ProtocolError(status, kind, "trailer section too large")
        lower = name.lower()
        if lower not in FORBIDDEN_TRAILERS:
            self._trailers.append((lower, value))


class RequestCodec(_Bounds):
    """Parses a stream of pipelined requests.  After `feed` raises, the codec must not be fed;
    `close` drops the parser (which refers back to the codec) so nothing waits for the cyclic
    garbage collector."""

    __slots__ = ("_chunked", "_cl", "_done_head", "_fed", "_feed_start", "_good_host",
                 "_handler", "_head_bytes", "_headers", "_held", "_in_message", "_last_end", "_limit",
                 "_msg_start",
                 "_parser", "_resume", "_scheme", "_url", "upgrade_offset_data")

    def __init__(self, handler: RequestHandler, max_header_bytes: int,
                 scheme: bytes = b"http", *, limits: H1Limits = DEFAULT_LIMITS) -> None:
        self._handler: RequestHandler | None = handler
        self._limit = max_header_bytes
        self._set_limits(limits)
        self._scheme = scheme
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

    @property
    def head_started(self) -> bool:
        return self._in_message and not self._done_head

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
        append = out.append
        special = _REQUEST_SPECIAL.get
        known = _REQUEST_NAMES.get
        cl: int | None = None
        expect = False
        upgrade = b""
        chunked = False
        for raw_name, value in headers:
            hit = known(raw_name)
            if hit is None:
                name = raw_name.lower()
                what = special(name)
            else:
                name, what = hit
            if what is None:
                append((name, value))
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
                    append((name, value))
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
        head = RequestHead(method, url, authority, self._scheme, out, cl, version, upgrade)
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


_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
"""A byte a reason phrase may not hold (RFC 9112 4: HTAB / SP / VCHAR / obs-text)."""


class ResponseHandler(Protocol):
    def on_head(self, head: ResponseHead, end_stream: bool, keep_alive: bool) -> None: ...

    def on_informational(self, head: ResponseHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self, trailers: Headers | None) -> None: ...

    def on_upgrade(self, head: ResponseHead, rest: bytes) -> None: ...


_IDLE, _HEAD, _BODY, _DONE = range(4)
"""`ResponseCodec` states, read as globals on the response path (a class attribute read through
the instance is a slower lookup)."""


class ResponseCodec(_Bounds):
    """Parses the responses of one upstream connection, one exchange at a time.  Limits as for
    requests (`H1Limits`); every violation is a 502-class `ProtocolError`."""

    __slots__ = ("_chunked", "_done_head", "_feed_len", "_handler", "_head_bytes",
                 "_head_request", "_headers", "_keep_alive", "_limit", "_parser", "_reason",
                 "_state", "_until_close", "_upgrade_head", "_upgrade_request")

    IDLE, HEAD, BODY, DONE = _IDLE, _HEAD, _BODY, _DONE

    def __init__(self, handler: ResponseHandler, max_header_bytes: int, *,
                 limits: H1Limits = DEFAULT_LIMITS) -> None:
        self._handler: ResponseHandler | None = handler
        self._limit = max_header_bytes
        self._set_limits(limits)
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._chunked = False
        self._chunks = 0
        self._body_in_feed = 0
        self._ext_carry = 0
        self._ext_credit = 0
        self._ext_fields = None
        self._feed_len = 0
        self._trailer_bytes = 0
        self._state = _IDLE
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
        if self._state == _DONE and self._head_request:
            # llhttp believed a HEAD response's Content-Length; start a fresh parser.
            self._parser = httptools.HttpResponseParser(self)
            self._chunked = False
        self._state = _HEAD
        self._ext_credit = 0
        self._ext_fields = None
        self._head_request = head_request
        self._upgrade_request = upgrade_request
        self._head_bytes = 0
        self._until_close = False

    @property
    def until_close(self) -> bool:
        """The body in progress is delimited by the connection closing."""
        return self._state == _BODY and self._until_close

    def close(self) -> None:
        """Drop the parser and the handler (the connection is gone): no reference cycle is
        left for the cyclic garbage collector."""
        self._parser = None
        self._handler = None
        self._upgrade_head = None
        self._headers = []
        self._trailers = None

    def feed(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            raise ProtocolError(502, "upstream_protocol", "connection closed")
        n = self._feed_len = len(data)
        if self._state != _BODY:
            if self._state in (_IDLE, _DONE):
                if data:
                    raise ProtocolError(502, "upstream_protocol",
                                        "upstream sent bytes with no request outstanding")
                return
            self._head_bytes += n
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            head = self._upgrade_head
            self._upgrade_head = None
            self._state = _DONE
            if head is not None and self._handler is not None:
                self._handler.on_upgrade(head, data[offset:])
            return
        except httptools.HttpParserError as exc:
            raise _reraise(exc, 502, "upstream_protocol", "malformed response") from None
        if self._state == _HEAD and self._head_bytes > self._limit + 4:
            raise ProtocolError(502, "upstream_protocol", "response head too large")
        if self._chunked:
            self._check_extensions(n, 502, "upstream_protocol")

    def feed_eof(self) -> bool:
        """The connection closed cleanly (FIN, not RST).  True when that completed a
        close-delimited body; the caller ends the exchange (the handler is not called)."""
        if self._state == _BODY and self._until_close:
            self._state = _DONE
            return True
        return False

    def on_message_begin(self) -> None:
        if self._state != _HEAD:
            raise ProtocolError(502, "upstream_protocol", "response with no request outstanding")
        self._headers = []
        self._reason = b""
        self._trailers = None
        self._done_head = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._done_head:
            self._trailer_field(name, value, 502, "upstream_protocol")
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._state != _HEAD:
            return
        p = self._parser
        assert p is not None
        if len(self._headers) > self._max_fields:
            raise ProtocolError(502, "upstream_protocol", "too many response header fields")
        status: int = p.get_status_code()
        self._done_head = True
        cl: int | None = None
        chunked = False
        conn_tokens = _NO_TOKENS
        out: Headers = []
        append = out.append
        special = _RESPONSE_SPECIAL.get
        known = _RESPONSE_NAMES.get
        for raw_name, value in self._headers:
            hit = known(raw_name)
            if hit is None:
                name = raw_name.lower()
                what = special(name)
            else:
                name, what = hit
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
            # (An HTTP/1.0 response with Transfer-Encoding is parsed as chunked: asking llhttp
            # for the version costs 0.25 us a response, and a response cannot desynchronise a
            # connection we never pipeline and close on any byte after a response.)
            cl = None
            self._chunked = True
            # (_start_chunked, inlined: this runs for every chunked response)
            self._ext_carry = self._ext_cap
            self._ext_credit += len(self._reason) + 15  # (never -1 here: one exchange a read)
            self._ext_fields = self._headers
            self._chunks = self._body_in_feed = self._trailer_bytes = 0
        reason = self._reason
        if reason != b"OK" and _BAD_REASON(reason):  # (the common phrase skips the search)
            # llhttp lets NUL and other controls through in the reason phrase; RFC 9112 4 allows
            # HTAB / SP / VCHAR / obs-text only.  A client gets our own phrase instead.
            reason = b""
        head = ResponseHead(status, out, reason, cl)
        if status == 101:
            if not self._upgrade_request:
                raise ProtocolError(502, "upstream_protocol", "101 to a request without Upgrade")
            self._upgrade_head = head
            return
        handler = self._handler
        assert handler is not None
        if status < 200:
            self._chunked = False
            self._ext_credit += len(self._reason) + 15 + sum(len(n) + len(v) + 4
                                                             for n, v in self._headers)
            handler.on_informational(head)
            return
        self._keep_alive = p.should_keep_alive()
        no_body = self._head_request or status in (204, 304) or cl == 0
        self._until_close = not no_body and cl is None and not chunked
        if no_body:
            self._state = _DONE
            self._chunked = False
            handler.on_head(head, True, self._keep_alive)
            handler.on_end(None)
            return
        self._state = _BODY
        handler.on_head(head, False, self._keep_alive)

    def on_body(self, body: bytes) -> None:
        if self._state == _BODY:
            if self._chunked:
                self._body_in_feed += len(body)
                self._chunks += 1
            self._handler.on_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self._chunked:
            self._chunked = False
            n = self._feed_len  # (nothing may follow a response: all of the read is its)
            if n - self._body_in_feed > self._ext_carry and self._ext_balance(n) < 0:
                raise ProtocolError(502, "upstream_protocol", "chunk extension too long")
        if self._state == _BODY:
            self._state = _DONE
            self._handler.on_end(self._trailers)  # type: ignore[union-attr]


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
# measured; this runs twice per proxied request).  The pairs are joined by `map` over the bound
# `join`, not a list comprehension: no Python frame per head (a comprehension is a call).
_JOIN_FIELD = b": ".join

def serialize_request_head(head: RequestHead, chunked: bool, extra: HeaderSeq = ()) -> bytes:
    """Request line and headers for an HTTP/1.1 upstream.  `extra` goes after the head's own.

    The framing is ours (rule 2): `transfer-encoding: chunked` when `chunked`, else
    `content-length` from `head.content_length` when the body length is known; with neither the
    request has no body."""
    lines = [b"%b %b HTTP/1.1\r\nhost: %b" % (head.method, head.path, head.authority)]
    lines += map(_JOIN_FIELD, head.headers)
    if extra:
        lines += map(_JOIN_FIELD, extra)
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
    lines += map(_JOIN_FIELD, head.headers)
    if extra:
        lines += map(_JOIN_FIELD, extra)
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    elif head.content_length is not None and status >= 200 and status != 204:
        lines.append(b"content-length: %d" % head.content_length)
    lines.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"\r\n".join(lines)


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
