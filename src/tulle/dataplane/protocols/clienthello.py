"""SNI and ALPN from a TLS ClientHello, read before the handshake.  No I/O.

Why: a listener's filter chains choose TLS settings, protocol and routing by the server name and
the ALPN protocols a client asks for (`tulle.dataplane.listeners.chains`), so the proxy must
read them from the ClientHello *before* it picks the certificate to answer with (Envoy's
`tls_inspector`).  The stdlib `ssl` module only shows them during its own handshake.

`ClientHelloReader` takes the bytes of a connection as they arrive (`feed`) and answers with a
`Hello` once it knows: `need_more`, `not_tls` (the first byte is not a TLS handshake record:
plaintext), `hello` (with `sni` and `alpn`), `invalid` (a handshake record that is not a
well-formed ClientHello), or `too_large`.

Rules of this module:

1. Every byte is from an untrusted peer: nothing here raises on any input, every length is
   checked against what contains it, and a ClientHello whose fields do not add up exactly is
   `invalid` (never guessed at).  Duplicate extensions are invalid (RFC 8446 4.2).
2. Bounded: a ClientHello may span several records (RFC 8446 5.1 allows any fragmentation),
   but its body may not exceed `MAX_CLIENT_HELLO_BYTES` and the records carrying it not
   `MAX_RECORDS`; past either it is `too_large`.  The reader keeps at most one record's bytes
   beyond the message, and parses each record once (a byte-at-a-time client costs linear work).
3. The answer for a given prefix never depends on bytes not yet seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Status = Literal["need_more", "not_tls", "hello", "invalid", "too_large"]

MAX_CLIENT_HELLO_BYTES: Final = 16_384
"""The largest ClientHello body read (a post-quantum hello is about 1.8 KB; 16 KiB is one full
record).  Larger is `too_large`: the listener closes and counts the connection."""
MAX_RECORDS: Final = 16
"""The most records one ClientHello may be split over."""

_RECORD_HEADER: Final = 5
_MAX_RECORD: Final = 1 << 14
_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 0x01
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_MAX_HOST: Final = 255
_HOST_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


@dataclass(frozen=True, slots=True)
class Hello:
    status: Status
    sni: str | None = None
    """The host_name of the server_name extension, lower-cased; None when absent."""
    alpn: tuple[str, ...] = ()
    """The protocols offered, in the client's order; empty when the extension is absent."""
    reason: str = ""
    """What made it `invalid` / `too_large` (for debug logs and tests; never peer bytes)."""


NEED_MORE: Final = Hello("need_more")
NOT_TLS: Final = Hello("not_tls")


def _invalid(reason: str) -> Hello:
    return Hello("invalid", reason=reason)


class ClientHelloReader:
    """Reassembles a ClientHello from handshake records fed in any split."""

    __slots__ = ("_buf", "_msg", "_pos", "_records", "result")

    def __init__(self) -> None:
        self._buf = bytearray()
        """Bytes fed and not yet consumed as whole records."""
        self._pos = 0
        self._msg = bytearray()
        """Handshake bytes reassembled so far."""
        self._records = 0
        self.result: Hello = NEED_MORE

    def feed(self, data: bytes) -> Hello:
        """Add the next bytes of the connection; the answer so far.  Once decided, the answer
        does not change (later bytes are ignored)."""
        if self.result is not NEED_MORE:
            return self.result
        self._buf += data
        self.result = self._advance()
        if self.result is not NEED_MORE:
            self._buf.clear()
            self._msg.clear()
        return self.result

    def _advance(self) -> Hello:
        buf = self._buf
        while True:
            n = len(buf)
            if n == 0:
                return NEED_MORE
            if buf[0] != _HANDSHAKE:
                return NOT_TLS if self._records == 0 else _invalid("not a handshake record")
            if n >= 2 and buf[1] != 0x03:
                return NOT_TLS if self._records == 0 else _invalid("record version")
            if n >= 3 and buf[2] > 0x04:
                return NOT_TLS if self._records == 0 else _invalid("record version")
            if n < _RECORD_HEADER:
                return NEED_MORE
            length = (buf[3] << 8) | buf[4]
            if length == 0 or length > _MAX_RECORD:
                return _invalid("record length")
            if self._records == 0 and n > _RECORD_HEADER:
                if buf[5] != _CLIENT_HELLO:
                    return _invalid("first handshake message is not a ClientHello")
                # (Only when this record holds the whole message header: it may span
                # records, and the next record's header is not a length.)
                if length >= 4 and n >= _RECORD_HEADER + 4 and \
                        int.from_bytes(buf[6:9], "big") > MAX_CLIENT_HELLO_BYTES:
                    return Hello("too_large", reason="ClientHello body")  # before buffering it
            if n < _RECORD_HEADER + length:
                return NEED_MORE
            self._records += 1
            if self._records > MAX_RECORDS:
                return Hello("too_large", reason="too many records")
            self._msg += buf[_RECORD_HEADER:_RECORD_HEADER + length]
            del buf[:_RECORD_HEADER + length]
            msg = self._msg
            if len(msg) >= 4:
                if msg[0] != _CLIENT_HELLO:
                    return _invalid("first handshake message is not a ClientHello")
                body_len = int.from_bytes(msg[1:4], "big")
                if body_len > MAX_CLIENT_HELLO_BYTES:
                    return Hello("too_large", reason="ClientHello body")
                if len(msg) >= 4 + body_len:
                    if len(msg) > 4 + body_len:
                        # Another handshake message after the ClientHello in the same flight
                        # is a protocol violation (the client must wait for the server).
                        return _invalid("bytes after the ClientHello")
                    return parse_client_hello(bytes(msg[4:]))


def parse_client_hello(body: bytes) -> Hello:
    """The SNI and ALPN of a whole ClientHello body (RFC 8446 4.1.2, RFC 6066 3, RFC 7301
    3.1); `invalid` when anything does not add up."""
    r = _Reader(body)
    r.skip(2 + 32)  # legacy_version, random
    r.skip(r.u8())  # legacy_session_id
    suites = r.u16()
    if suites == 0 or suites % 2:
        return _invalid("cipher_suites")
    r.skip(suites)
    comp = r.u8()
    if comp == 0:
        return _invalid("legacy_compression_methods")
    r.skip(comp)
    if r.bad:
        return _invalid("truncated before extensions")
    if r.pos == r.end:
        return Hello("hello")  # no extensions at all (an old client): no SNI, no ALPN
    ext_len = r.u16()
    if r.bad or r.pos + ext_len != r.end:
        return _invalid("extensions length")
    seen: set[int] = set()
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    while r.pos < r.end:
        etype = r.u16()
        data = r.take(r.u16())
        if r.bad:
            return _invalid("extension length")
        if etype in seen:
            return _invalid("duplicate extension")
        seen.add(etype)
        if etype == _EXT_SERVER_NAME:
            got = _server_name(data)
            if got is None:
                return _invalid("server_name")
            sni = got
        elif etype == _EXT_ALPN:
            offered = _alpn(data)
            if offered is None:
                return _invalid("application_layer_protocol_negotiation")
            alpn = offered
    return Hello("hello", sni, alpn)


def _server_name(ext: bytes) -> str | None:
    """The host_name entry of a server_name extension; None when malformed."""
    r = _Reader(ext)
    if r.u16() != len(ext) - 2 or len(ext) < 2 + 3:
        return None
    host: str | None = None
    while r.pos < r.end:
        kind = r.u8()
        name = r.take(r.u16())
        if r.bad:
            return None
        if kind == 0:
            if host is not None or not name or len(name) > _MAX_HOST:
                return None  # one host_name only (RFC 6066 3)
            if not _HOST_BYTES.issuperset(name):
                return None
            host = name.decode("ascii").lower()
    return host if host is not None else None


def _alpn(ext: bytes) -> tuple[str, ...] | None:
    r = _Reader(ext)
    if r.u16() != len(ext) - 2 or len(ext) < 2 + 2:
        return None
    out: list[str] = []
    while r.pos < r.end:
        proto = r.take(r.u8())
        if r.bad or not proto:
            return None
        out.append(proto.decode("latin-1"))
    return tuple(out)


class _Reader:
    """Bounds-checked big-endian reads; past the end it sets `bad` and returns zeros."""

    __slots__ = ("bad", "buf", "end", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.bad = False

    def _advance(self, n: int) -> int:
        start = self.pos
        if self.bad or start + n > self.end:
            self.bad = True
            return -1
        self.pos = start + n
        return start

    def u8(self) -> int:
        i = self._advance(1)
        return 0 if i < 0 else self.buf[i]

    def u16(self) -> int:
        i = self._advance(2)
        return 0 if i < 0 else (self.buf[i] << 8) | self.buf[i + 1]

    def skip(self, n: int) -> None:
        self._advance(n)

    def take(self, n: int) -> bytes:
        i = self._advance(n)
        return b"" if i < 0 else self.buf[i:i + n]
