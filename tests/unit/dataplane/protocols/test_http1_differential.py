"""Differential fuzz: the proxy and a strict origin agree on where every request ends.

Request smuggling is a disagreement about message boundaries between two parsers in a chain.
Random pipelined request sequences (bodies framed by Content-Length or chunked with random
chunk sizes, extensions and trailers; `Connection` nominating random fields, framing fields
included) go through the proxy's codec, exactly as the upstream side re-frames them
(`serialize_request_head` + chunks, as `H1Stream` writes them), and the bytes that would reach
the origin are parsed by h11, a strict independent parser.  Both must see the same number of
requests with the same methods, targets and bodies as were generated, however the client's
bytes are split into reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.protocols.http1 import (
    ProtocolError,
    RequestCodec,
    encode_chunk,
    encode_last_chunk,
    serialize_request_head,
)

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH = "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%"
FRAMING = [b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive"]


@dataclass
class Req:
    method: bytes
    target: bytes
    body: bytes
    framing: str  # "none" | "cl" | "chunked"
    pieces: list[bytes]
    extensions: list[bytes]
    headers: list[tuple[bytes, bytes]]
    nominated: list[bytes]
    trailers: list[tuple[bytes, bytes]]

    def wire(self) -> bytes:
        lines = [b"%b %b HTTP/1.1" % (self.method, self.target), b"Host: origin.test"]
        lines += [b"%b: %b" % h for h in self.headers]
        if self.nominated:
            lines.append(b"Connection: " + b", ".join(self.nominated))
        if self.framing == "cl":
            lines.append(b"Content-Length: %d" % len(self.body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
        out = b"\r\n".join(lines) + b"\r\n\r\n"
        if self.framing == "cl":
            out += self.body
        elif self.framing == "chunked":
            for piece, ext in zip(self.pieces, self.extensions, strict=True):
                out += b"%x%b\r\n%b\r\n" % (len(piece), ext, piece)
            out += b"0\r\n" + b"".join(b"%b: %b\r\n" % t for t in self.trailers) + b"\r\n"
        return out


names = st.text(TOKEN, min_size=1, max_size=12).map(str.encode).filter(
    lambda n: n.lower() not in {*FRAMING, b"te", b"upgrade", b"expect", b"proxy-connection",
                                b"trailer", b"http2-settings"})
values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20).map(
    str.encode)
extension = st.sampled_from([b"", b";a", b";a=b", b';name="quoted value"', b";x=1;y=2"])


@st.composite
def requests(draw: st.DrawFn) -> Req:
    framing = draw(st.sampled_from(["none", "cl", "chunked"]))
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"])
                  if framing == "none" else st.sampled_from([b"POST", b"PUT", b"PATCH"]))
    target = b"/" + draw(st.text(PATH, max_size=30)).encode().replace(b"%", b"%25")
    pieces = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5)) \
        if framing != "none" else []
    body = b"".join(pieces)
    headers = draw(st.lists(st.tuples(names, values), max_size=6))
    nominated = draw(st.lists(st.sampled_from(FRAMING[:3]) | names, max_size=3))
    trailers = draw(st.lists(st.tuples(names, values), max_size=2)) \
        if framing == "chunked" else []
    exts = [draw(extension) for _ in pieces]
    return Req(method, target, body, framing, pieces, exts, headers, nominated, trailers)


class Proxy:
    """The codec's handler, writing what the upstream side would write for each request."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.seen: list[tuple[bytes, bytes, bytes]] = []
        self._chunked = False
        self._body = b""
        self._head: RequestHead | None = None

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        self._head = head
        self._body = b""
        # H1Stream: chunked when a body of unknown length follows.
        self._chunked = has_body and head.content_length is None
        self.out += serialize_request_head(head, self._chunked)

    def on_request_body(self, data: bytes) -> None:
        self._body += data
        self.out += encode_chunk(data) if self._chunked else data

    def on_request_end(self, trailers: Headers | None) -> None:
        if self._chunked:
            self.out += encode_last_chunk(trailers)
        assert self._head is not None
        self.seen.append((self._head.method, self._head.path, self._body))


def origin_parse(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """What a strict origin (h11) makes of the bytes the proxy sent."""
    got, error = origin_parse_until_error(data)
    if error is not None:
        raise error
    return got


def origin_parse_until_error(
        data: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], h11.ProtocolError | None]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")  # the proxy closed after these: anything unfinished is an error
    got: list[tuple[bytes, bytes, bytes]] = []
    method = target = b""
    body = b""
    while True:
        try:
            ev = conn.next_event()
        except h11.ProtocolError as exc:
            return got, exc
        if isinstance(ev, h11.Request):
            method, target, body = bytes(ev.method), bytes(ev.target), b""
        elif isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            got.append((method, target, body))
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        elif ev is h11.PAUSED or ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
            return got, None
        else:
            raise AssertionError(ev)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=6), st.lists(st.integers(1, 200), max_size=8))
def test_proxy_and_strict_origin_agree_on_every_message_boundary(
        reqs: list[Req], cuts: list[int]) -> None:
    wire = b"".join(r.wire() for r in reqs)
    proxy = Proxy()
    codec = RequestCodec(proxy, 65536)
    pos = 0
    for cut in cuts:  # arbitrary read boundaries, then the rest
        if pos >= len(wire):
            break
        codec.feed(wire[pos:pos + cut])
        pos += cut
    if pos < len(wire):
        codec.feed(wire[pos:])
    expected = [(r.method, r.target, r.body) for r in reqs]
    assert proxy.seen == expected
    assert origin_parse(bytes(proxy.out)) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(
           [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b"0", b"a", b"\x00", b",",
            b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"", b"\r\n\r\n"])),
           min_size=1, max_size=4),
       st.integers(1, 64))
def test_whatever_the_proxy_accepts_the_origin_frames_the_same_way(
        reqs: list[Req], edits: list[tuple[int, bytes]], step: int) -> None:
    """Mutated input: the codec may refuse it (ProtocolError), but every request it passes on
    must reach a strict origin as exactly that request, at the same boundaries; an origin that
    rejects a field the proxy let through may stop early (a 400), never see another request."""
    wire = bytearray(b"".join(r.wire() for r in reqs))
    for at, what in edits:  # replace one byte (or delete it, for b"") at a random place
        i = at % len(wire)
        wire[i:i + 1] = what
    proxy = Proxy()
    codec = RequestCodec(proxy, 65536)
    try:
        for i in range(0, len(wire), step):
            codec.feed(bytes(wire[i:i + step]))
    except ProtocolError:
        pass  # refused: what was passed on before must still agree
    whole = proxy.seen  # requests the proxy ended (its output may hold one more, unfinished)
    got, error = origin_parse_until_error(bytes(proxy.out))
    if error is None:
        assert got == whole
    else:
        assert got == whole[:len(got)], (got, whole, error)
