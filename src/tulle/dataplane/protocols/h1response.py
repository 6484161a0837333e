"""HTTP/1.1 response codec: an upstream connection's responses in, `ResponseHandler` calls
out, one exchange at a time.  No I/O.

The rules it keeps are in `protocols/http1.py`; the shared tables and bounds in `h1common.py`.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import httptools

from tulle.dataplane.exchange import (
    MAX_INFORMATIONAL,
    TOO_MANY_INFORMATIONAL,
    Headers,
    ResponseHead,
)
from tulle.dataplane.protocols.h1common import (
    _CL,
    _COMMON_TOKENS,
    _CONN,
    _NO_TOKENS,
    _NOT_HEADERS,
    _RESPONSE_NAMES,
    _RESPONSE_SPECIAL,
    _TE,
    _UPGRADE,
    DEFAULT_LIMITS,
    H1Limits,
    ProtocolError,
    _Bounds,
    _connection_tokens,
    _reraise,
)

_BAD_REASON: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
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
                 "_head_request", "_headers", "_interim", "_keep_alive", "_limit", "_parser",
                 "_reason", "_state", "_until_close", "_upgrade_head", "_upgrade_request")

    IDLE: Final = _IDLE  # (Final: a class constant when compiled, not an instance slot)
    HEAD: Final = _HEAD
    BODY: Final = _BODY
    DONE: Final = _DONE

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
        self._interim = 0
        """1xx heads of the exchange in progress (`MAX_INFORMATIONAL`)."""
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
        self._interim = 0

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
        if status < 100:
            # llhttp takes any three digits; RFC 9110 15 has 100-599 (above 599 is a 5xx to
            # a client that does not know it, below 100 is none).  `099` went out as a 1xx
            # with no final answer after it: the client hung (attack audit, ADR 0094).
            raise ProtocolError(502, "upstream_protocol", f"response status {status:03d}")
        self._done_head = True
        cl: int | None = None
        chunked = False
        conn_tokens = _NO_TOKENS
        out: Headers = []
        # (The tables as typed locals, their methods called directly: compiled, each is a C
        # call per field, where a bound-method local would be a generic Python call.)
        special = _RESPONSE_SPECIAL
        known = _RESPONSE_NAMES
        for raw_name, value in self._headers:
            hit = known.get(raw_name)
            if hit is None:
                name = raw_name.lower()
                what = special.get(name)
            else:
                name, what = hit
            if what is None:
                out.append((name, value))
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
                out.append((name, value))
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
            self._interim += 1
            if self._interim > MAX_INFORMATIONAL:
                # (ADR 0115: a flood of them cost the loop seconds; none past the cap leaves)
                raise ProtocolError(502, "upstream_protocol", TOO_MANY_INFORMATIONAL)
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
