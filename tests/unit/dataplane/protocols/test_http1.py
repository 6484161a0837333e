"""The HTTP/1.1 codec without sockets: heads and chunks round-trip, smuggling shapes are refused
before a head is handed on, and no input makes it raise anything but ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.http1 import (
    DEFAULT_LIMITS,
    FORBIDDEN_TRAILERS,
    HOP_BY_HOP,
    H1Limits,
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
# Names the codec forwards as they are: not the ones it consumes or drops on purpose (framing,
# hop-by-hop, `HTTP2-Settings`), each tested on its own below.
names = st.text(TCHAR, min_size=1, max_size=20).map(str.encode).filter(
    lambda n: n.lower() not in HOP_BY_HOP | {b"host", b"content-length", b"expect",
                                             b"http2-settings"})
# In trailers the codec also drops what RFC 9110 6.5.1 keeps out of them (tested below).
trailer_names = names.filter(lambda n: n.lower() not in FORBIDDEN_TRAILERS)
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
       st.lists(st.tuples(trailer_names, values), max_size=3))
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


# -- HTTP/1 hardening (issue 6 items 1 and 9) ------------------------------------------------

def refused(wire: bytes | list[bytes], limits: H1Limits = DEFAULT_LIMITS) -> ProtocolError:
    codec = RequestCodec(Requests(), 65536, limits=limits)
    with pytest.raises(ProtocolError) as info:
        for piece in [wire] if isinstance(wire, bytes) else wire:
            codec.feed(piece)
    return info.value


def test_http10_with_transfer_encoding_is_400() -> None:
    err = refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert (err.status, err.kind) == (400, "malformed_request")


# (Content-Length and Transfer-Encoding in trailers llhttp refuses itself: see below.)
FORBIDDEN = (b"Host: evil\r\nAuthorization: x\r\n"
             b"TE: trailers\r\nTrailer: x\r\nCookie: c=1\r\nSet-Cookie: c=2\r\nX-Ok: 1\r\n\r\n")


def test_forbidden_trailer_fields_are_dropped_from_requests() -> None:
    got = Requests()
    RequestCodec(got, 4096).feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n1\r\nx\r\n0\r\n" + FORBIDDEN)
    assert got.body == b"x" and got.trailers == [[(b"x-ok", b"1")]]


@pytest.mark.parametrize("field", [b"Content-Length: 5", b"Transfer-Encoding: chunked"])
def test_framing_fields_in_trailers_are_400(field: bytes) -> None:
    assert refused(CHUNKED + b"1\r\nx\r\n0\r\n%b\r\n\r\n" % field).status == 400


def test_forbidden_trailer_fields_are_dropped_from_responses_and_on_output() -> None:
    got = Responses()
    codec = ResponseCodec(got, 4096)
    codec.start(False)
    codec.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n" + FORBIDDEN)
    assert got.ends == [[(b"x-ok", b"1")]]
    # Trailers that came from HTTP/2 are filtered when written as HTTP/1.
    assert encode_last_chunk([(b"host", b"evil"), (b"content-length", b"1"),
                              (b"x-ok", b"1")]) == b"0\r\nx-ok: 1\r\n\r\n"


def test_h2c_upgrade_is_stripped_and_parsing_goes_on_as_http11() -> None:
    got = Requests()
    codec = RequestCodec(got, 4096)
    codec.feed(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
               b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(h.path, h.upgrade, h.headers) for h in got.heads] == [(b"/a", b"", []),
                                                                   (b"/b", b"", [])]
    assert codec.upgrade_offset_data is None
    wire = serialize_request_head(got.heads[0], False)
    assert b"upgrade" not in wire.lower() and b"http2-settings" not in wire.lower()


def test_h2c_beside_another_upgrade_token_keeps_only_the_other() -> None:
    got = Requests()
    RequestCodec(got, 4096).feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                                 b"Upgrade: h2c, websocket\r\n\r\n")
    assert got.heads[0].upgrade == b"websocket"


def test_h2c_upgrade_with_a_body_is_400() -> None:
    err = refused(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
                  b"Content-Length: 2\r\n\r\nhi")
    assert err.status == 400


def head_with(n: int) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(n))


def test_header_count_limit_is_431() -> None:
    limits = H1Limits(max_header_count=10)
    got = Requests()
    RequestCodec(got, 65536, limits=limits).feed(head_with(9) + b"\r\n")  # 9 + Host
    assert len(got.heads) == 1
    assert refused(head_with(10) + b"\r\n", limits).status == 431
    assert refused(head_with(100) + b"\r\n").status == 431  # the default is 100


def test_response_header_count_limit_is_an_upstream_error() -> None:
    codec = ResponseCodec(Responses(), 65536, limits=H1Limits(max_header_count=10))
    codec.start(False)
    with pytest.raises(ProtocolError) as info:
        codec.feed(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(11))
                   + b"\r\n")
    assert info.value.status == 502


CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
SMALL = H1Limits(max_chunk_extension_bytes=64, max_trailer_bytes=256)


@pytest.mark.parametrize("step", [None, 1, 7, 100])
def test_long_chunk_extension_is_400_however_the_reads_fall(step: int | None) -> None:
    body = b"1;ext=" + b"v" * 5000 + b"\r\nx\r\n0\r\n\r\n"
    if step is None:
        pieces = [CHUNKED, body]
    else:
        pieces = [CHUNKED] + [body[i:i + step] for i in range(0, len(body), step)]
    err = refused(pieces, SMALL)
    assert (err.status, err.kind) == (400, "malformed_request")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=200), st.integers(0, 60)),
                min_size=1, max_size=30),
       st.integers(1, 64))
def test_short_chunk_extensions_pass_however_the_reads_fall(
        chunks: list[tuple[bytes, int]], step: int) -> None:
    body = b"".join(b"%x;e=%b\r\n%b\r\n" % (len(c), b"v" * ext, c) for c, ext in chunks)
    body += b"0\r\nx-t: %b\r\n\r\n" % (b"t" * 200)
    got = Requests()
    codec = RequestCodec(got, 65536, limits=SMALL)
    codec.feed(CHUNKED)
    for i in range(0, len(body), step):
        codec.feed(body[i:i + step])
    assert got.body == b"".join(c for c, _ in chunks)
    assert got.trailers == [[(b"x-t", b"t" * 200)]]


def test_long_chunk_extension_in_a_response_is_an_upstream_error() -> None:
    codec = ResponseCodec(Responses(), 65536, limits=SMALL)
    codec.start(False)
    codec.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            codec.feed(b"1;" + b"e" * 50)
    assert info.value.status == 502


def test_trailer_section_over_the_limit_is_431() -> None:
    err = refused(CHUNKED + b"1\r\nx\r\n0\r\n" + b"x-t: %b\r\n" % (b"t" * 300) + b"\r\n", SMALL)
    assert (err.status, err.kind) == (431, "header_too_large")
    many = b"".join(b"x-%d: v\r\n" % i for i in range(20))
    assert refused(CHUNKED + b"0\r\n" + many + b"\r\n", H1Limits(max_header_count=10)
                   ).status == 431


def test_response_trailer_section_over_the_limit_is_an_upstream_error() -> None:
    codec = ResponseCodec(Responses(), 65536, limits=SMALL)
    codec.start(False)
    with pytest.raises(ProtocolError) as info:
        codec.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                   + b"x-t: %b\r\n\r\n" % (b"t" * 300))
    assert info.value.status == 502


def test_a_request_over_the_extension_limit_is_never_ended() -> None:
    got = Requests()
    codec = RequestCodec(got, 65536, limits=SMALL)
    codec.feed(CHUNKED)
    with pytest.raises(ProtocolError):
        codec.feed(b"1;ext=" + b"v" * 5000 + b"\r\nx\r\n0\r\n\r\n")
    assert got.trailers == []  # the upstream never sees this request end


def test_big_pipelined_requests_after_a_chunked_one_are_not_taken_for_extensions() -> None:
    got = Requests()
    codec = RequestCodec(got, 65536, limits=SMALL)
    big = b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: %b\r\n\r\n" % (b"v" * 8000)
    codec.feed(CHUNKED + b"1;e=1\r\nx\r\n0\r\n\r\n" + big * 5)
    assert [h.path for h in got.heads] == [b"/"] + [b"/big"] * 5
    assert len(got.trailers) == 6


@pytest.mark.parametrize("reason", [b"O\x00K", b"O\x01K", b"O\x7fK", b"O\x1bK"])
def test_a_reason_phrase_with_control_bytes_is_not_passed_on(reason: bytes) -> None:
    # Found by fuzz.http1_response: llhttp accepts NUL and other controls in the reason phrase.
    got = Responses()
    codec = ResponseCodec(got, 8192)
    codec.start(False)
    codec.feed(b"HTTP/1.1 200 " + reason + b"\r\ncontent-length: 0\r\n\r\n")
    (head,) = got.heads
    assert head.reason == b""
    assert serialize_response_head(head, chunked=False, close=False).startswith(
        b"HTTP/1.1 200 OK\r\n")


def test_a_reason_phrase_with_tabs_and_obs_text_is_kept() -> None:
    got = Responses()
    codec = ResponseCodec(got, 8192)
    codec.start(False)
    codec.feed(b"HTTP/1.1 200 Fine\tand \xe9\r\ncontent-length: 0\r\n\r\n")
    assert got.heads[0].reason == b"Fine\tand \xe9"


# -- request targets and Host: host[:port] only (found by an outside review) -----------------

@pytest.mark.parametrize("wire", [
    pytest.param(b"GET http://user@svc/x HTTP/1.1\r\nHost: a\r\n\r\n", id="abs_userinfo"),
    pytest.param(b"GET http://svc:8x/x HTTP/1.1\r\nHost: a\r\n\r\n", id="abs_bad_port"),
    pytest.param(b"GET http:///x HTTP/1.0\r\n\r\n", id="abs_empty_authority"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a/b?c\r\n\r\n", id="host_path"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", id="host_space"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: u@a\r\n\r\n", id="host_userinfo"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: a/b\r\n\r\n", id="asterisk_host_path"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", id="asterisk_not_options"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a@b\r\n\r\n",
                 id="second_request_host_userinfo"),
])
def test_invalid_authority_or_target_is_400(wire: bytes) -> None:
    err = refused(wire)
    assert (err.status, err.kind) == (400, "malformed_request")


@pytest.mark.parametrize(("target", "path", "authority"), [
    (b"http://svc?/public/../admin", b"/?/public/../admin", b"svc"),
    (b"http://svc:8080", b"/", b"svc:8080"),
    (b"https://[::1]:80/x?y", b"/x?y", b"[::1]:80"),
])
def test_absolute_form_authority_ends_at_slash_or_query(target: bytes, path: bytes,
                                                        authority: bytes) -> None:
    got = Requests()
    RequestCodec(got, 4096).feed(b"GET %b HTTP/1.1\r\nHost: other\r\n\r\n" % target)
    (head,) = got.heads
    assert (head.path, head.authority) == (path, authority)


@pytest.mark.parametrize("framing", [b"Content-Length: 2\r\n\r\nhi",
                                     b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"])
def test_upgrade_request_with_a_body_is_400(framing: bytes) -> None:
    # llhttp takes the bytes after an upgrade head for the tunnel: the upstream would be told
    # of a body it never gets and take the next pooled request for it.
    err = refused(b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                  b"Upgrade: websocket\r\n" + framing)
    assert (err.status, err.kind) == (400, "malformed_request")


def test_known_field_name_tables_agree_with_the_general_path() -> None:
    """The spelled-name shortcut in both codecs gives exactly what lower() and the special
    tables give: a hit can never change what happens to a field."""
    from tulle.dataplane.protocols import h1common as http1

    for table, special in ((http1._REQUEST_NAMES, http1._REQUEST_SPECIAL),
                           (http1._RESPONSE_NAMES, http1._RESPONSE_SPECIAL)):
        assert b"Content-Length" in table and b"host" in table
        for spelling, (name, what) in table.items():
            assert name == spelling.lower()
            assert what == special.get(name)


def test_whitespace_after_a_field_value_is_not_part_of_it() -> None:
    """RFC 9110 section 5.5; llhttp keeps it.  Kept, `x-debug: true ` did not match a header
    rule on "true" (an authorization DENY let it through: attack review A1)."""
    got = Requests()
    RequestCodec(got, 1 << 20).feed(b"GET / HTTP/1.1\r\nHost: h \r\nx-debug:true \t \r\n"
                                    b"x-b:  a  b\t\r\n\r\n")
    (parsed,) = got.heads
    assert parsed.headers == [(b"x-debug", b"true"), (b"x-b", b"a  b")]
    assert parsed.authority == b"h"
