"""HTTP/1.1 codec parts both directions share: limits, the protocol error, the tables of
hop-by-hop and specially handled fields, and the body/trailer bounds (`_Bounds`).  No I/O.

The rules every HTTP/1 codec keeps are written once, in `protocols/http1.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import httptools

from tulle.dataplane.exchange import Headers
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

FORBIDDEN_TRAILERS: Final = frozenset({
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


_COMMON_TOKENS: Final[dict[bytes, frozenset[bytes]]] = {
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


_COMMON_NAMES: Final = (
    b"host", b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"connection",
    b"content-length", b"content-type", b"transfer-encoding", b"cookie", b"authorization",
    b"referer", b"origin", b"cache-control", b"upgrade", b"expect", b"te", b"keep-alive",
    b"pragma", b"range", b"if-none-match", b"if-modified-since", b"x-forwarded-for",
    b"x-forwarded-proto", b"x-request-id", b"server", b"date", b"last-modified", b"etag",
    b"accept-ranges", b"expires", b"vary", b"location", b"set-cookie", b"content-encoding",
)
_EXTRA_SPELLINGS: Final = {b"etag": b"ETag", b"te": b"TE"}


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


_EXT_SLACK: Final = 24
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
