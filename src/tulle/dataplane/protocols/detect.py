"""Protocol sniffing: which protocol a client speaks, from the first bytes it sent.  No I/O.

`detect(data)` looks at the bytes a connection has delivered so far and answers with a
`Detection`:

* ``http1``: the start of a request-line: a method token (RFC 9110 5.6.2, any run of
  ``tchar`` -- ``GET``, ``PROPFIND``, ``PURGE``, also a lower-case ``get``) followed by a space,
  after any number of empty lines (RFC 9112 2.2: a server SHOULD ignore at least one CRLF
  before the request-line; a bare LF counts too, as llhttp skips it).  Whether the method is
  one the proxy serves is the HTTP/1 parser's question, not the sniffer's: an unknown or
  lower-case method gets its 400 there, and never reaches an application as raw bytes.
* ``http2``: the whole 24-byte prior-knowledge preface ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``.
  A client that starts like the preface and then diverges (``PRI * HTTP/1.1``) is judged by
  the HTTP/1 rule.
* ``tls``: a TLS handshake record (0x16, version 0x03 0x00-0x04) carrying a ClientHello.  When
  the ClientHello is wholly inside the first record, its SNI and ALPN offers are extracted for
  routing.
* ``tcp``: anything else -- clearly not HTTP: a byte outside the token grammar before the
  first space, a space with no token before it, a TLS header that is not a ClientHello.
* ``need_more``: the bytes are a proper prefix of one of the above; read more and call again.

When a driver must decide on a prefix that is still ``need_more`` (its client went quiet, or
sent `MAX_SNIFF_BYTES` without deciding), `undecided(data)` says which of the protocols that
prefix was on its way to, so an HTTP-looking prefix is still handled by the HTTP stack (whose
header timeout and parser then answer it) rather than relayed raw.

Rules of this module:

1. Every input is bytes from an untrusted peer: nothing here raises on any input, and the
   answer for a given prefix never depends on bytes not yet seen (so a byte-at-a-time client
   gets the same answer as one that sends everything at once).
2. The sniffer never asks for more than `MAX_SNIFF_BYTES`: the longest thing it waits for is
   one TLS record (2^14 bytes of payload plus the 5-byte header, RFC 8446 5.1).  HTTP/2 decides
   within 24 bytes, HTTP/1 at the first byte that is not a token character (a real method is
   at most a few dozen bytes; empty lines or a token running on are bounded by the cap, then
   `undecided` hands them to the HTTP/1 parser).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from tulle.dataplane.protocols.clienthello import parse_client_hello

Protocol = Literal["http1", "http2", "tls", "tcp", "need_more"]

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP1_METHODS: Final = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                        b"TRACE", b"CONNECT")
"""The common methods (tests use them); any token is a method to the sniffer."""
COMMON_STARTS: Final = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")
"""Request-lines most connections start with: `detect` answers ``http1`` for them at once,
before the general rule (which gives the same answer: each is a token and a space, and none
is a prefix of the HTTP/2 preface)."""
TCHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""RFC 9110 5.6.2 tchar: the bytes a method token is made of."""
_REQUEST_START: Final = re.compile(rb"[\r\n]*([!#$%&'*+\-.^_`|~0-9A-Za-z]*)")
"""Empty lines, then a (possibly empty, possibly unfinished) token.  Always matches."""
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
"""A (possibly empty) run of token characters.  Always matches."""

TLS_RECORD_HEADER: Final = 5
TLS_MAX_RECORD: Final = 1 << 14
MAX_SNIFF_BYTES: Final = TLS_RECORD_HEADER + TLS_MAX_RECORD
"""The most a driver ever needs to buffer before `detect` decides."""

_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 0x01


@dataclass(frozen=True, slots=True)
class Detection:
    protocol: Protocol
    sni: str | None = None
    """TLS only: the host_name of the server_name extension, lower-cased."""
    alpn: tuple[str, ...] = ()
    """TLS only: the protocols the client offered, in its order."""


NEED_MORE: Final = Detection("need_more")
HTTP1: Final = Detection("http1")
HTTP2: Final = Detection("http2")
TCP: Final = Detection("tcp")
TLS_OPAQUE: Final = Detection("tls")


def detect(data: bytes) -> Detection:
    """Classify the first bytes of a connection (see the module docstring)."""
    if data.startswith(COMMON_STARTS):  # most connections: one call, no regex (ADR 0073)
        return HTTP1
    if not data:
        return NEED_MORE
    first = data[0]
    if first == 0x50:  # "P": the HTTP/2 preface, or POST / PUT / PATCH
        n = min(len(data), len(H2_PREFACE))
        if data[:n] == H2_PREFACE[:n]:
            return HTTP2 if n == len(H2_PREFACE) else NEED_MORE
    if first == _HANDSHAKE:
        return _detect_tls(data)
    return _detect_http1(data)


def _detect_http1(data: bytes) -> Detection:
    m = _REQUEST_START.match(data)
    assert m is not None  # every group may be empty
    end = m.end()
    if end == len(data):
        return NEED_MORE  # empty lines and/or a token still being written
    return HTTP1 if data[end] == 0x20 and end > m.start(1) else TCP


RESUME_AFTER: Final = 64
"""Prefixes at least this long that are still `need_more` are HTTP/1 ones (the preface
decides within 24 bytes, a TLS header within 6): `detect_next` resumes their scan."""


def detect_next(data: bytes, before: int) -> Detection:
    """`detect(data)`, for a driver that buffers: `data[:before]` was already `need_more`.

    Why: a client that sends its first bytes one segment at a time makes a driver ask again
    on every segment, and `detect` scans the whole prefix each time: a token trickled up to
    `MAX_SNIFF_BYTES` cost the proxy a quarter of a second of CPU per connection.  An
    undecided HTTP/1 prefix is empty lines and/or a token, so the rule resumes at `before`:
    still a token (or, before one started, empty lines and a token) to the end is
    `need_more`, else the byte where it stops decides, as in `detect`.  Short prefixes and
    TLS records (whose checks read fixed offsets) go to `detect` itself.  The answer is
    always `detect(data)`'s (a property test holds them equal)."""
    if before < RESUME_AFTER or data[0] == _HANDSHAKE:
        return detect(data)
    if data[before - 1] in TCHARS:  # the token has started: only tchars continue it
        t = _TOKEN.match(data, before)
        assert t is not None
        end = t.end()
        started = True
    else:  # empty lines so far
        m = _REQUEST_START.match(data, before)
        assert m is not None
        end = m.end()
        started = end > m.start(1)
    if end == len(data):
        return NEED_MORE
    return HTTP1 if data[end] == 0x20 and started else TCP


def undecided(data: bytes) -> Protocol:
    """Which protocol a `need_more` prefix was on its way to: ``http2`` for a part of the
    preface past ``PRI`` (shorter parts are also a method token: ``http1``), ``tls`` for a part
    of a TLS record, ``http1`` for empty lines and/or a token, ``tcp`` for anything else
    (including no bytes at all, and prefixes `detect` has already decided)."""
    if not data or detect(data) is not NEED_MORE:
        return "tcp"
    if data[0] == _HANDSHAKE:
        return "tls"
    if len(data) > 3 and H2_PREFACE.startswith(data[:len(H2_PREFACE)]):
        return "http2"
    return "http1"


def _detect_tls(data: bytes) -> Detection:
    n = len(data)
    if n >= 2 and data[1] != 0x03:
        return TCP
    if n >= 3 and data[2] > 0x04:
        return TCP
    if n < TLS_RECORD_HEADER:
        return NEED_MORE
    length = (data[3] << 8) | data[4]
    if length < 4 or length > TLS_MAX_RECORD:
        return TCP
    if n < 6:
        return NEED_MORE
    if data[5] != _CLIENT_HELLO:
        return TCP
    if n < TLS_RECORD_HEADER + length:
        return NEED_MORE
    return _client_hello(data[TLS_RECORD_HEADER:TLS_RECORD_HEADER + length])


def _client_hello(record: bytes) -> Detection:
    """SNI and ALPN of a ClientHello wholly inside the first record (`protocols.clienthello`
    parses it).  A message that continues in a later record, or whose fields do not add up, is
    still TLS; it just yields no routing hints."""
    body_len = int.from_bytes(record[1:4], "big")
    if body_len != len(record) - 4:
        return TLS_OPAQUE  # fragmented over several records (or followed by more)
    hello = parse_client_hello(record[4:])
    if hello.status != "hello":
        return TLS_OPAQUE
    return Detection("tls", hello.sni, hello.alpn)
