"""h2 -> HTTP/1 field checks: each bad pseudo-header and field shape is refused, the good ones
pass, and a fuzz of the whole translation (h2 frames -> our codec -> HTTP/1.1 bytes) checks that
whatever is accepted is read by strict HTTP/1 parsers (h11, httptools) as exactly one request
with the same method, target and fields."""

from __future__ import annotations

import h2.config
import h2.connection
import h11
import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tulle.dataplane.protocols.h2common import H2ProtocolError
from tulle.dataplane.protocols.h2engine import H2Codec
from tulle.dataplane.protocols.h2events import RequestReceived, StreamRejected
from tulle.dataplane.protocols.h2fields import (
    authority_ok,
    content_length,
    method_ok,
    name_ok,
    path_ok,
    value_ok,
)
from tulle.dataplane.protocols.h2translate import request_head
from tulle.dataplane.protocols.http1 import serialize_request_head


@pytest.mark.parametrize("m", [b"GET", b"PROPFIND", b"M-SEARCH", b"get", b"!#$%&'*+-.^_`|~"])
def test_methods_that_are_tokens(m: bytes) -> None:
    assert method_ok(m)


@pytest.mark.parametrize("m", [b"", b"G T", b"GET\t", b"GET /x HTTP/1.1", b"G(T", b"G\x00",
                               b"GET\xff", b"G/T", b"G:T"])
def test_methods_that_are_not(m: bytes) -> None:
    assert not method_ok(m)


@pytest.mark.parametrize(("p", "m"), [(b"/", b"GET"), (b"/a/b?c=d&e=%20#f", b"GET"),
                                      (b"*", b"OPTIONS"), (b"//x", b"GET")])
def test_origin_form_and_options_star(p: bytes, m: bytes) -> None:
    assert path_ok(p, m)


@pytest.mark.parametrize(("p", "m"), [
    (b"", b"GET"), (b"*", b"GET"), (b"http://evil/x", b"GET"), (b"evil:80", b"GET"),
    (b"/a b", b"GET"), (b"/a\tb", b"GET"), (b"/a\x00", b"GET"), (b"/a\x7f", b"GET"),
    (b"/caf\xc3\xa9", b"GET"), (b"/a\r\nX: y", b"GET"), (b"x/", b"GET"), (b"**", b"OPTIONS"),
])
def test_other_targets_are_refused(p: bytes, m: bytes) -> None:
    assert not path_ok(p, m)


@pytest.mark.parametrize("a", [b"example.test", b"example.test:8080", b"127.0.0.1:80",
                               b"[::1]", b"[2001:db8::1]:443", b"xn--bcher-kva.test",
                               b"a%20b", b"host:", b"svc_1.ns.svc.cluster.local"])
def test_authorities_that_are_host_and_port(a: bytes) -> None:
    assert authority_ok(a)


@pytest.mark.parametrize("a", [b"", b"user@host", b"user:pw@host:80", b"a b", b"a/b", b"a?b",
                               b"a#b", b"host:80x", b"host:123456", b"[::1", b"::1", b"[zz]",
                               b"a\x00b", b"a%2", b"a\xffb", b":80", b"a:80:80"])
def test_authorities_that_are_not(a: bytes) -> None:
    assert not authority_ok(a)


@pytest.mark.parametrize("n", [b"x", b"content-type", b"x-b3-traceid", b"a!#$%&'*+-.^_`|~1"])
def test_names_that_are_lower_case_tokens(n: bytes) -> None:
    assert name_ok(n)


@pytest.mark.parametrize("n", [b"", b"X", b"a b", b"a(b", b"a)b", b"a/b", b"a:b", b"a\"b",
                               b"a{b", b"a\xffb", b"a\x00b", b"a,b", b"a;b", b"a=b", b"a@b"])
def test_names_that_are_not(n: bytes) -> None:
    assert not name_ok(n)


@pytest.mark.parametrize("v", [b"", b"x", b"a b\tc", b"caf\xc3\xa9", b"~!\"#"])
def test_values_without_controls(v: bytes) -> None:
    assert value_ok(v)


@pytest.mark.parametrize("v", [b"a\x00", b"a\rb", b"a\nb", b"a\x01", b"a\x0bb", b"a\x1f",
                               b"a\x7f", b" a", b"a ", b"\ta"])
def test_values_with_controls_or_surrounding_whitespace(v: bytes) -> None:
    assert not value_ok(v)


@pytest.mark.parametrize(("v", "n"), [(b"0", 0), (b"42", 42), (b"007", 7),
                                      (b"1_0", None), (b"+5", None), (b"-1", None),
                                      (b" 5", None), (b"5 ", None), (b"", None),
                                      (b"1" * 20, None), (b"\xd9\xa3", None), (b"5,5", None)])
def test_content_length_is_digits_only(v: bytes, n: int | None) -> None:
    assert content_length(v) == n


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]


def test_equal_content_lengths_collapse_and_different_ones_are_malformed() -> None:
    head = request_head([*BASE, (b"content-length", b"5"), (b"content-length", b"5")], 65536)
    assert not isinstance(head, tuple)
    # Framing lives in `content_length` only; the serialisers write the one field from it.
    assert head.content_length == 5 and head.headers == []
    assert serialize_request_head(head, False).count(b"content-length: 5\r\n") == 1
    bad = request_head([*BASE, (b"content-length", b"5"), (b"content-length", b"6")], 65536)
    assert isinstance(bad, tuple) and bad[0] == 0


def test_host_header_standing_in_for_authority_is_checked_too() -> None:
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
              (b"host", b"evil@a.test")]
    assert request_head(fields, 65536) == (0, "h2_malformed_request", "invalid :authority")


# -- fuzz: h2 frames -> codec -> HTTP/1.1 bytes -> strict parsers ----------------------------

_BYTE_SOUP = st.binary(max_size=12) | st.sampled_from(
    [b"GET", b"/x", b"a.test", b"x-a", b"v", b" ", b"\t", b"\x01", b"\x7f", b"(", b"@", b":",
     b"/", b"*", b"%41", b"[::1]", b"\xff", b"content-length", b"1", b"te", b"trailers",
     b"host", b"cookie", b"\r\n"])
_PIECE = st.lists(_BYTE_SOUP, max_size=4).map(b"".join)


def _h11_parse(wire: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    req = conn.next_event()
    assert isinstance(req, h11.Request), req
    got = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            got += ev.data
            continue
        assert isinstance(ev, h11.EndOfMessage), ev
        break
    assert conn.trailing_data == (b"", False)  # exactly one request: nothing left over
    return req.method, req.target, [(bytes(n), bytes(v)) for n, v in req.headers], got


class _Collect:
    def __init__(self) -> None:
        self.heads: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.heads.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.complete += 1




def _mostly(valid: list[bytes], junk: st.SearchStrategy[bytes] = _PIECE) -> st.SearchStrategy[bytes]:
    """Valid values seven times in eight: many examples reach the HTTP/1 parsers."""
    ok = st.sampled_from(valid)
    return st.one_of(ok, ok, ok, ok, ok, ok, ok, junk)


_METHOD = _mostly([b"GET", b"POST", b"OPTIONS", b"get", b"M-SEARCH"])
_PATH = _mostly([b"/", b"*", b"/a?b=c", b"/%2e%2e/x"], _PIECE.map(lambda p: b"/" + p) | _PIECE)
_AUTHORITY = _mostly([b"a.test", b"a.test:80", b"[::1]:1", b"10.0.0.1"])
_NAME = _mostly([b"x-a", b"content-length", b"cookie", b"te", b"accept", b"host"])
_VALUE = _mostly([b"1", b"a b", b"trailers", b"\xc3\xa9", b"a.test", b"2"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=_METHOD, path=_PATH, authority=_AUTHORITY,
       fields=st.lists(st.tuples(_NAME, _VALUE), max_size=4))
def test_whatever_the_codec_accepts_is_one_identical_http1_request(
        method: bytes, path: bytes, authority: bytes, fields: list[tuple[bytes, bytes]]) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    client.initiate_connection()
    server = H2Codec(client_side=False)
    client.send_headers(1, [(b":method", method), (b":scheme", b"http"),
                            (b":authority", authority), (b":path", path), *fields],
                        end_stream=False)
    try:
        events = server.feed(client.data_to_send())
    except H2ProtocolError:
        return  # refused by h2 as a connection error: nothing forwarded
    (ev,) = events
    if isinstance(ev, StreamRejected):
        return
    assert isinstance(ev, RequestReceived)
    head = ev.head
    if head.content_length is not None and head.content_length >= 100:
        return  # not worth sending; the framing of the head is what is under test
    body = b"x" * (head.content_length or 0)
    wire = serialize_request_head(head, chunked=head.content_length is None)
    wire += b"%x\r\n%b\r\n0\r\n\r\n" % (3, b"abc") if head.content_length is None else body
    m, target, headers, got = _h11_parse(wire)
    assert got == (b"abc" if head.content_length is None else body)
    assert (m, target) == (head.method, head.path)  # h11: the request line as the codec saw it
    expected = [(b"host", head.authority), *head.headers]
    if head.content_length is None:
        expected.append((b"transfer-encoding", b"chunked"))
    else:
        expected.append((b"content-length", b"%d" % head.content_length))
    assert headers == expected
    assert head.method == method and head.path == path
    p = _Collect()
    parser = httptools.HttpRequestParser(p)
    try:
        parser.feed_data(wire)
    except httptools.HttpParserInvalidMethodError:
        assert head.method not in (b"GET", b"POST", b"OPTIONS", b"M-SEARCH")
        return  # llhttp knows a fixed list of methods: refused, never read differently
    assert p.complete == 1 and p.url == path and parser.get_method() == method
    assert p.heads == expected


def test_trailers_remembered_per_connection_are_still_checked_when_new() -> None:
    """`decode_trailers` with a connection's memo: a trailer it accepted before passes again
    without the checks, a new one is still checked (a bad one refused, never remembered), and
    the memo stops growing at its bound."""
    from tulle.dataplane.protocols.h2fields import FieldMemo
    from tulle.dataplane.protocols.h2translate import decode_trailers

    memo = FieldMemo()
    good = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
    assert decode_trailers(good, memo) == good
    assert memo.fields == set(good)
    assert decode_trailers([(b":status", b"200"), (b"te", b"trailers"), *good], memo) == good
    for bad in ([(b"grpc-status", b" 0")], [(b"Grpc-Status", b"0")], [(b"x", b"a\x01b")]):
        assert decode_trailers(bad, memo) is None
        assert decode_trailers(bad, None) is None
    assert memo.fields == set(good)
    for i in range(2 * FieldMemo.MAX):
        assert decode_trailers([(b"x-n", b"%d" % i)], memo) == [(b"x-n", b"%d" % i)]
    assert len(memo.fields) == FieldMemo.MAX
