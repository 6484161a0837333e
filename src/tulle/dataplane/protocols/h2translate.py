"""HTTP/2 header lists <-> exchange heads, and the gRPC form of a local reply.

Why a module of its own: translation is the part of the HTTP/2 codec that knows HTTP
semantics (pseudo-headers, hop-by-hop fields, cookie crumbs, framing fields, which values stay
out of the HPACK dynamic table, gRPC's trailers-only replies); the codec in `http2.py` only
drives h2's connection and flow control.  Rules 1, 5 and 7 of `http2.py` are implemented here:
heads leave as exchange values and go out with the pseudo-headers back and the same filter.
Pure functions of bytes, no h2 state; they run once per head, on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.h2fields import (
    KNOWN_METHODS,
    NAME_CHARS,
    TOKEN_CHARS,
    VALUE_CHARS,
    FieldMemo,
    authority_ok,
    content_length,
    name_ok,
    path_ok,
    value_ok,
)

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
    b"http2-settings",
})
_OUT_SKIP: Final = HOP_BY_HOP | {b"host", b"content-length"}
"""Never sent from `headers`: framing is written from `content_length` (exchange.py)."""

MALFORMED: Final = "h2_malformed_request"


# -- heads in -------------------------------------------------------------------------------

def request_head(headers: list[tuple[bytes, bytes]], limit: int,
                 memo: FieldMemo | None = None) -> RequestHead | tuple[int, str, str]:
    """h2's validated request header list -> RequestHead, or (status, kind, detail).

    Status 0 means malformed (rule 7): the stream is reset with PROTOCOL_ERROR, nothing is
    forwarded.  `memo` remembers what this connection already passed (see h2fields)."""
    method = path = scheme = authority = b""
    host = b""
    out: Headers = []
    cookies: list[bytes] = []
    cl: int | None = None
    size = 0
    known = memo.fields if memo is not None else _NO_FIELDS
    for field in headers:
        n, v = field
        size += len(n) + len(v) + 32
        if n[:1] == b":":
            if n == b":method":
                method = v
            elif n == b":path":
                path = v
            elif n == b":authority":
                authority = v
            elif n == b":scheme":
                scheme = v
            continue
        if field not in known:
            if n.translate(None, NAME_CHARS) or v.translate(None, VALUE_CHARS):
                return 0, MALFORMED, f"invalid field {n[:64]!r}"
            if memo is not None and len(memo.fields) < FieldMemo.MAX:
                memo.fields.add(field)
        if n in HOP_BY_HOP:
            if n == b"te" and v.strip().lower() == b"trailers":
                out.append((n, b"trailers"))
            continue
        if n == b"host":
            host = v
            continue
        if n == b"cookie":
            if v:  # an empty crumb would leave "a; " (trailing whitespace) after the join
                cookies.append(v)
            continue
        if n == b"content-length":  # framing: `content_length` only (exchange.py)
            n_cl = content_length(v)
            if n_cl is None or (cl is not None and n_cl != cl):
                return 0, MALFORMED, "invalid or conflicting content-length"
            cl = n_cl  # RFC 9110 8.6: an equal repeat collapses into one value
            continue
        out.append(field)
    if size > limit:
        return 431, "header_too_large", f"request head exceeds {limit} bytes"
    if method == b"CONNECT":
        return 501, "unsupported", "CONNECT is not supported"
    if ((method not in KNOWN_METHODS and (not method or method.translate(None, TOKEN_CHARS)))
            or not path_ok(path, method)):
        return 0, MALFORMED, "invalid :method or :path"
    authority = authority or host
    if authority and (memo is None or authority != memo.authority):
        if not authority_ok(authority):
            return 0, MALFORMED, "invalid :authority"
        if memo is not None:
            memo.authority = authority
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    return RequestHead(method, path, authority, scheme, out, cl, b"2")


_NO_FIELDS: Final[frozenset[tuple[bytes, bytes]]] = frozenset()


def response_head(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    status = 0
    out: Headers = []
    cl: int | None = None
    for n, v in headers:
        if n[:1] == b":":
            if n == b":status":
                status = int(v)
            continue
        if n in HOP_BY_HOP:
            continue
        if n == b"content-length":  # framing: `content_length` only (exchange.py)
            if v.isdigit():
                cl = int(v)
            continue
        out.append((n, v))
    return ResponseHead(status, out, b"", cl)


# -- heads out ------------------------------------------------------------------------------

_SECURE = frozenset({b"authorization", b"proxy-authorization"})
_UNIQUE = frozenset({b"x-request-id", b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-spanid",
                     b"x-b3-parentspanid"})
"""Values that differ on every request: indexing them would only churn the HPACK dynamic table
(evicting the fields that do repeat) and lengthen every table search of the encoder."""
_NOT_INDEXED: Final = _SECURE | _UNIQUE
_SPACE: Final = (0x20, 0x09)


def _filtered(headers: Headers, trailers: bool = False) -> Headers:
    """Regular fields of an exchange head as HTTP/2 sends them (rule 5); `trailers`: of a
    trailer section, where even `te: trailers` is dropped (`encode_trailers`).  (hpack is
    imported here, not at the top: the libnghttp2 engine never loads it, ADR 0051.)"""
    from hpack import NeverIndexedHeaderTuple

    out: Headers = []
    for n, raw in headers:
        if n[:1] == b":" or (n in _OUT_SKIP and (trailers or n != b"te" or raw != b"trailers")):
            continue
        v = raw.strip(b" \t") if raw and (raw[0] in _SPACE or raw[-1] in _SPACE) else raw
        if n in _NOT_INDEXED or (n == b"cookie" and len(v) < 20):
            out.append(NeverIndexedHeaderTuple(n, v))
        else:
            out.append((n, v))
    return out


def encode_request(head: RequestHead, scheme: bytes) -> Headers:
    if not head.authority:  # RFC 9113 8.3.1: no authority to convey, no :authority
        out = [(b":method", head.method), (b":scheme", scheme), (b":path", head.path or b"/"),
               *_filtered(head.headers)]
    else:
        out = [(b":method", head.method), (b":scheme", scheme),
               (b":authority", head.authority), (b":path", head.path or b"/"),
               *_filtered(head.headers)]
    if head.content_length is not None:  # framing from what we know (exchange.py)
        out.append((b"content-length", b"%d" % head.content_length))
    return out


def encode_response(head: ResponseHead) -> Headers:
    out = [(b":status", b"%d" % head.status), *_filtered(head.headers)]
    status = head.status
    if head.content_length is not None and status >= 200 and status != 204:
        out.append((b"content-length", b"%d" % head.content_length))
    return out


# -- trailers ------------------------------------------------------------------------------

def encode_trailers(headers: Headers) -> Headers:
    """A trailer section as HTTP/2 sends it: `_filtered`, and never `te` (its one legitimate
    value, `trailers`, means nothing after the body)."""
    return _filtered(headers, trailers=True)


def decode_trailers(headers: list[tuple[bytes, bytes]],
                    memo: FieldMemo | None = None) -> Headers | None:
    """h2's validated trailer list -> regular fields (pseudo and hop-by-hop dropped), or None
    when a field would not survive HTTP/1 (rule 7 of http2.py: a stream error).  `memo`: the
    fields this connection already accepted (gRPC's `grpc-status: 0` on every call)."""
    out: Headers = []
    known = memo.fields if memo is not None else _NO_FIELDS
    for field in headers:
        n, v = field
        if n.startswith(b":") or n in HOP_BY_HOP:
            continue
        if field not in known:
            if not (name_ok(n) and value_ok(v)):
                return None
            if memo is not None and len(memo.fields) < FieldMemo.MAX:
                memo.fields.add(field)
        out.append(field)
    return out


# -- gRPC local replies ---------------------------------------------------------------------

GRPC_STATUS_FOR_HTTP: Final = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
"""HTTP status of a local reply -> grpc-status (gRPC's http-grpc-status-mapping, as Envoy does);
anything else is 2 UNKNOWN."""


def is_grpc(head: RequestHead) -> bool:
    for n, v in head.headers:
        if n == b"content-type":
            return v[:16] == b"application/grpc"
    return False


def grpc_message(detail: str) -> bytes:
    """Percent-encode a grpc-message value (gRPC over HTTP/2: printable ASCII except '%')."""
    out = bytearray()
    for b in detail.encode():
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def local_grpc_status(http_status: int, extra: Sequence[tuple[bytes, bytes]] = ()) -> int:
    """The grpc-status of the trailers-only reply standing for local HTTP status
    `http_status`: a `grpc-status` in `extra` (a fault's, a rate limit's RESOURCE_EXHAUSTED),
    else gRPC's mapping of the HTTP status.  The golden metrics count the reply under it."""
    code = GRPC_STATUS_FOR_HTTP.get(http_status, 2)
    for n, v in extra:
        if n == b"grpc-status" and v.isdigit():
            code = int(v)
    return code


def grpc_trailers_only(http_status: int, detail: str,
                       extra: Sequence[tuple[bytes, bytes]] = ()) -> Headers:
    """A trailers-only gRPC response standing for a local HTTP error, with
    `local_grpc_status`; the other `extra` fields (`retry-after`, ...) are sent along."""
    code = local_grpc_status(http_status, extra)
    rest = [(n, v) for n, v in extra if n != b"grpc-status"]
    if rest:
        return [(b":status", b"200"), (b"content-type", b"application/grpc"),
                (b"grpc-status", b"%d" % code), (b"grpc-message", grpc_message(detail)), *rest]
    return [(b":status", b"200"), (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % code), (b"grpc-message", grpc_message(detail))]
