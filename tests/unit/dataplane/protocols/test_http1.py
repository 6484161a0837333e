"""The HTTP/1.1 codec without sockets: heads and chunks round-trip, smuggling shapes are refused
before a head is handed on, and no input makes it raise anything but ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.http1 import (
    HOP_BY_HOP,
    ProtocolError,
    RequestCodec,
    ResponseCodec,
    encode_chunk,
    encode_last_chunk,
    serialize_request_head,
    serialize_response_head,
)


class Requests:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.body = b""
        self.trailers: list[Headers | None] = []

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        self.heads.append(head)

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    def on_request_end(self, trailers: Headers | None) -> None:
        self.trailers.append(trailers)


class Responses:
    def __init__(self) -> None:
        self.heads: list[ResponseHead] = []
        self.body = b""
        self.ends: list[Headers | None] = []

    def on_head(self, head: ResponseHead, end_stream: bool, keep_alive: bool) -> None:
        self.heads.append(head)

    def on_informational(self, head: ResponseHead) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_end(self, trailers: Headers | None) -> None:
        self.ends.append(trailers)

    def on_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        pass


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(TCHAR, min_size=1, max_size=20).map(str.encode).filter(
    lambda n: n.lower() not in HOP_BY_HOP | {b"host", b"content-length", b"expect"})
# Field values: visible ASCII and obs-text, inner spaces/tabs, no leading/trailing whitespace.
vchar = st.integers(0x21, 0x7E) | st.integers(0x80, 0xFF)
values = st.lists(vchar | st.sampled_from([0x20, 0x09]), max_size=40).map(bytes).map(
    lambda v: v.strip(b" \t"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=30),
       st.lists(names, max_size=3))
def test_request_head_round_trip(headers: list[tuple[bytes, bytes]],
                                 connection_named: list[bytes]) -> None:
    head = RequestHead(b"GET", b"/p?q=1", b"h.example", b"http", list(headers))
    extra = [(b"connection", b", ".join(connection_named))] if connection_named else []
    wire = serialize_request_head(head, False, extra)
    got = Requests()
    RequestCodec(got, 1 << 20).feed(wire)
    (parsed,) = got.heads
    dropped = {n.lower() for n in connection_named}
    assert parsed.headers == [(n.lower(), v) for n, v in headers if n.lower() not in dropped]
    assert (parsed.method, parsed.path, parsed.authority) == (b"GET", b"/p?q=1", b"h.example")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=10),
       st.lists(st.tuples(names, values), max_size=3))
def test_chunked_body_round_trip(chunks: list[bytes], trailers: list[tuple[bytes, bytes]]) -> None:
    head = RequestHead(b"POST", b"/", b"h", b"http", [])
    wire = serialize_request_head(head, True) + b"".join(map(encode_chunk, chunks))
    wire += encode_last_chunk(trailers or None)
    got = Requests()
    codec = RequestCodec(got, 1 << 20)
    for i in range(0, len(wire), 7):  # arbitrary split points
        codec.feed(wire[i:i + 7])
    assert got.body == b"".join(chunks)
    assert got.trailers == [[(n.lower(), v) for n, v in trailers] or None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=10),
       st.lists(st.tuples(names, values), max_size=5))
def test_response_round_trip(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    wire = serialize_response_head(ResponseHead(200, list(headers)), chunked=True, close=False)
    wire += b"".join(map(encode_chunk, chunks)) + encode_last_chunk(None)
    got = Responses()
    codec = ResponseCodec(got, 1 << 20)
    codec.start(False)
    codec.feed(wire)
    assert got.heads[0].headers == [(n.lower(), v) for n, v in headers]
    assert got.body == b"".join(chunks) and got.ends == [None]


PREFIXES = [b"", b"GET / HTTP/1.1\r\nHost: a\r\n", b"POST / HTTP/1.1\r\nHost: a\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(PREFIXES), st.lists(st.binary(max_size=200), max_size=5))
def test_random_bytes_raise_only_protocol_error(prefix: bytes, pieces: list[bytes]) -> None:
    codec = RequestCodec(Requests(), 4096)
    try:
        codec.feed(prefix)
        for piece in pieces:
            codec.feed(piece)
    except ProtocolError as exc:
        assert exc.status in (400, 431, 501, 505)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5), st.booleans())
def test_random_response_bytes_raise_only_protocol_error(pieces: list[bytes],
                                                         head: bool) -> None:
    codec = ResponseCodec(Responses(), 4096)
    codec.start(head)
    try:
        codec.feed(b"HTTP/1.1 200 OK\r\n")
        for piece in pieces:
            codec.feed(piece)
        codec.feed_eof()
    except ProtocolError as exc:
        assert exc.status == 502


@pytest.mark.parametrize(("wire", "status"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 400),
])
def test_refused_before_the_head_is_handed_on(wire: bytes, status: int) -> None:
    got = Requests()
    with pytest.raises(ProtocolError) as info:
        RequestCodec(got, 4096).feed(wire)
    assert info.value.status == status
    assert got.heads == []


def test_giant_header_line_without_newline_is_431() -> None:
    codec = RequestCodec(Requests(), 4096)
    codec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(10):
            codec.feed(b"v" * 1000)
    assert info.value.status == 431


@pytest.mark.parametrize("split", [None, 10, 60])
def test_oversized_head_is_431_however_the_reads_fall(split: int | None) -> None:
    # The exact head size is summed only when the bytes fed since the message began exceed
    # the limit: a big pipelined head behind a small one, in the same read or straddling two.
    got = Requests()
    codec = RequestCodec(got, 4096)
    small = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    big = b"GET /2 HTTP/1.1\r\nHost: a\r\n" + b"X-Big: %b\r\n" % (b"v" * 3000) * 2 + b"\r\n"
    wire = small + big
    with pytest.raises(ProtocolError) as info:
        if split is None:
            codec.feed(wire)
        else:
            codec.feed(wire[:split])
            codec.feed(wire[split:])
    assert info.value.status == 431
    assert [h.path for h in got.heads] == [b"/1"]


def test_handler_bug_is_not_disguised_as_a_400() -> None:
    class Broken(Requests):
        def on_request_head(self, *a: object) -> None:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        RequestCodec(Broken(), 4096).feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_upgrade_headers_are_recreated_upstream() -> None:
    got = Requests()
    RequestCodec(got, 4096).feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                                 b"Upgrade: websocket\r\n\r\n")
    wire = serialize_request_head(got.heads[0], False)
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in wire


def test_response_after_the_end_of_a_response_is_an_error() -> None:
    got = Responses()
    codec = ResponseCodec(got, 4096)
    codec.start(False)
    with pytest.raises(ProtocolError):
        codec.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"
                   b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\ny")
    assert got.body == b"x" and got.ends == [None]


def test_101_without_an_upgrade_request_is_an_error() -> None:
    codec = ResponseCodec(Responses(), 4096)
    codec.start(False, upgrade_request=False)
    with pytest.raises(ProtocolError):
        codec.feed(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n")


# -- framing is the proxy's own (issue 6 item 1) ---------------------------------------------

@pytest.mark.parametrize("nominated", [b"content-length", b"Content-Length, x-a", b"host",
                                       b"transfer-encoding"])
def test_connection_cannot_remove_framing_from_a_request(nominated: bytes) -> None:
    got = Requests()
    RequestCodec(got, 4096).feed(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: %b\r\nX-A: 1\r\n"
                                 b"Content-Length: 3\r\n\r\nabc" % nominated)
    (head,) = got.heads
    assert head.content_length == 3 and got.body == b"abc" and head.authority == b"a"
    assert all(n != b"content-length" for n, _ in head.headers)  # framing: content_length only
    wire = serialize_request_head(head, False)
    assert wire.count(b"content-length: 3\r\n") == 1
    again = Requests()
    RequestCodec(again, 4096).feed(wire + b"abc")
    assert again.heads[0].content_length == 3 and again.body == b"abc"


def test_connection_cannot_remove_framing_from_a_response() -> None:
    got = Responses()
    codec = ResponseCodec(got, 4096)
    codec.start(False)
    codec.feed(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello")
    (head,) = got.heads
    assert head.content_length == 5 and got.body == b"hello" and got.ends == [None]
    wire = serialize_response_head(head, chunked=False, close=False)
    assert wire.count(b"content-length: 5\r\n") == 1


def test_serialisers_frame_from_content_length_not_from_headers() -> None:
    req = RequestHead(b"POST", b"/", b"h", b"http", [(b"x-a", b"1")], content_length=7)
    assert b"content-length: 7\r\n\r\n" in serialize_request_head(req, False)
    chunked = serialize_request_head(RequestHead(b"POST", b"/", b"h", b"http", []), True)
    assert b"transfer-encoding: chunked\r\n\r\n" in chunked
    assert b"content-length" not in chunked
    bodiless = serialize_request_head(RequestHead(b"GET", b"/", b"h", b"http", []), False)
    assert b"content-length" not in bodiless and b"transfer-encoding" not in bodiless
    assert b"content-length: 9\r\n" in serialize_response_head(
        ResponseHead(200, [], content_length=9), chunked=False, close=False)
    assert b"content-length: 9\r\n" in serialize_response_head(  # HEAD / 304: representation
        ResponseHead(304, [], content_length=9), chunked=False, close=False)
    for status in (100, 204):
        assert b"content-length" not in serialize_response_head(
            ResponseHead(status, [], content_length=9), chunked=False, close=False)
