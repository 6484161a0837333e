"""Sniffing the first bytes of a connection: HTTP/1 request-lines (any method token, after empty
lines), the HTTP/2 preface, TLS, the rest; and what an undecided prefix is on its way to."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.protocols.detect import (
    COMMON_STARTS,
    H2_PREFACE,
    HTTP1,
    HTTP1_METHODS,
    MAX_SNIFF_BYTES,
    NEED_MORE,
    TCHARS,
    TCP,
    Detection,
    _detect_http1,
    detect,
    detect_next,
    undecided,
)


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a real TLS client (stdlib ssl over memory BIOs)."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = client_hello("api.example.com", ["h2", "http/1.1"])
VALID_STARTS = [H2_PREFACE, *(m + b" " for m in HTTP1_METHODS), HELLO]


@pytest.mark.parametrize("method", HTTP1_METHODS)
def test_each_method_followed_by_a_space_is_http1(method: bytes) -> None:
    assert detect(method + b" /index.html HTTP/1.1\r\n").protocol == "http1"
    assert detect(method + b" ").protocol == "http1"


def test_the_full_preface_is_http2_and_pri_alone_is_not_http1() -> None:
    assert detect(H2_PREFACE).protocol == "http2"
    assert detect(H2_PREFACE + b"\x00\x00\x12\x04").protocol == "http2"
    assert detect(b"PRI ").protocol == "need_more"
    # Diverging from the preface, it is a request-line with the (unknown) method PRI: the
    # HTTP/1 parser answers it, nothing relays it.
    assert detect(b"PRI * HTTP/1.1\r\n\r\n").protocol == "http1"


@pytest.mark.parametrize("data", [
    b"PROPFIND /dav HTTP/1.1\r\n",
    b"PURGE /cache HTTP/1.1\r\n",
    b"get / HTTP/1.1\r\n",  # not a method the parser accepts; the parser says so (400)
    b"GETS /",
    b"M-SEARCH * HTTP/1.1\r\n",
    b"BASELINE-CONTROL /",
    b"X!#$%&'*+-.^_`|~9 /",  # every tchar class
    b"\r\nPOST / HTTP/1.1\r\n",  # RFC 9112 2.2: an empty line before the request-line
    b"\r\n\r\n\r\nGET /",
    b"\nGET /",  # a bare LF empty line (llhttp skips it too)
])
def test_any_method_token_followed_by_a_space_is_http1(data: bytes) -> None:
    assert detect(data).protocol == "http1"


@given(st.binary(min_size=1, max_size=40).map(
           lambda b: bytes(TCHARS[x % len(TCHARS)] for x in b)),
       st.integers(0, 4), st.booleans())
def test_the_whole_token_grammar_is_http1_and_its_prefixes_wait(token: bytes, lines: int,
                                                                  bare_lf: bool) -> None:
    start = (b"\n" if bare_lf else b"\r\n") * lines + token + b" "
    if start.startswith(b"PRI "):
        return  # the HTTP/2 preface's own rule; tested above
    assert detect(start + b"/ HTTP/1.1\r\n").protocol == "http1"
    assert detect(start).protocol == "http1"
    for i in range(1, len(start)):
        assert detect(start[:i]).protocol == "need_more", start[:i]
        assert undecided(start[:i]) == "http1", start[:i]


@pytest.mark.parametrize("data", [
    b"GET\t/",  # only SP ends a method
    b" GET / HTTP/1.1\r\n",  # no token before the space
    b"\r\n / HTTP/1.1\r\n",
    b"GET\r\n",
    b"G\x00",
    b"GE(T /",  # "(" is a delimiter, not a tchar
    b"\r\n\x16\x03\x01",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
    b"*1\r\n$4\r\nPING\r\n",  # Redis
    b"\x16\x03\x05\x00\x10\x01",  # TLS record with an unknown minor version
    b"\x16\x02\x01",
    b"\x16\x03\x01\x00\x10\x02",  # a handshake record that is not a ClientHello
    b"\x16\x03\x01\x48\x01\x01",  # record longer than TLS allows
    b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
])
def test_anything_else_is_tcp(data: bytes) -> None:
    assert detect(data).protocol == "tcp"


def test_client_hello_yields_sni_and_alpn() -> None:
    d = detect(HELLO)
    assert d == Detection("tls", "api.example.com", ("h2", "http/1.1"))


def test_client_hello_without_sni_or_alpn() -> None:
    d = detect(client_hello(None))
    assert d.protocol == "tls"
    assert d.sni is None
    assert d.alpn == ()


def test_bytes_after_the_client_hello_do_not_change_the_answer() -> None:
    assert detect(HELLO + b"\x14\x03\x03\x00\x01\x01") == detect(HELLO)


def test_client_hello_continued_in_another_record_is_tls_without_hints() -> None:
    # Split the handshake message over two records: the first record's payload is 40 bytes.
    msg = HELLO[5:]
    first = msg[:40]
    fragmented = b"\x16\x03\x01" + len(first).to_bytes(2, "big") + first
    assert detect(fragmented) == Detection("tls")


def test_garbled_client_hello_is_still_tls() -> None:
    msg = bytearray(HELLO)
    msg[5 + 4 + 34] = 0xFF  # session id length far beyond the message
    assert detect(bytes(msg)) == Detection("tls")


@pytest.mark.parametrize("start", VALID_STARTS, ids=lambda b: repr(b[:8]))
def test_every_proper_prefix_needs_more(start: bytes) -> None:
    decided = detect(start).protocol
    assert decided != "need_more"
    for i in range(len(start)):
        assert detect(start[:i]).protocol == "need_more", start[:i]


@given(st.sampled_from(VALID_STARTS), st.data())
def test_a_prefix_never_decides_differently_from_the_whole(start: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(start)))
    got = detect(start[:cut]).protocol
    assert got in ("need_more", detect(start).protocol)


@given(st.binary(max_size=256))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert detect(data).protocol in ("http1", "http2", "tls", "tcp", "need_more")


@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_behind_a_tls_header_never_raise(body: bytes) -> None:
    record = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    assert detect(record).protocol in ("tls", "tcp", "need_more")
    mangled = b"\x16\x03\x03" + len(body).to_bytes(2, "big") + b"\x01" + body
    assert detect(mangled).protocol in ("tls", "tcp", "need_more")


@given(st.integers(0, len(HELLO) - 1), st.integers(0, 255))
def test_single_byte_corruptions_of_a_client_hello_never_raise(i: int, b: int) -> None:
    msg = bytearray(HELLO)
    msg[i] = b
    assert detect(bytes(msg)).protocol in ("tls", "tcp", "need_more")


def test_the_sniffer_never_needs_more_than_its_cap() -> None:
    huge = b"\x16\x03\x01\x40\x00\x01" + b"\x00" * (MAX_SNIFF_BYTES - 6)
    assert len(huge) == MAX_SNIFF_BYTES
    assert detect(huge).protocol == "tls"
    assert detect(huge[:-1]).protocol == "need_more"


def test_a_token_that_never_ends_waits_up_to_the_cap_and_leans_http1() -> None:
    long = b"A" * MAX_SNIFF_BYTES
    assert detect(long).protocol == "need_more"
    assert undecided(long) == "http1"
    assert undecided(b"\r\n" * (MAX_SNIFF_BYTES // 2)) == "http1"


@pytest.mark.parametrize(("prefix", "lean"), [
    (b"G", "http1"),
    (b"\r\n", "http1"),
    (b"\r\nPROPF", "http1"),
    (b"get", "http1"),
    (b"P", "http1"),  # also a preface prefix, but as much POST or PUT
    (b"PRI", "http1"),
    (b"PRI ", "http2"),
    (H2_PREFACE[:-1], "http2"),
    (b"\x16", "tls"),
    (HELLO[:10], "tls"),
])
def test_undecided_prefixes_lean_to_what_they_were_becoming(prefix: bytes, lean: str) -> None:
    assert detect(prefix).protocol == "need_more"
    assert undecided(prefix) == lean


@pytest.mark.parametrize("data", [b"", b"GET /", b"*1\r\n", H2_PREFACE, HELLO])
def test_undecided_of_nothing_or_of_a_decided_prefix_is_tcp(data: bytes) -> None:
    assert undecided(data) == "tcp"


@given(st.binary(max_size=64))
def test_undecided_never_raises_and_is_a_protocol(data: bytes) -> None:
    assert undecided(data) in ("http1", "http2", "tls", "tcp")


@given(st.sampled_from(COMMON_STARTS), st.binary(max_size=64))
def test_the_common_starts_shortcut_answers_as_the_general_rule(start: bytes, rest: bytes) -> None:
    """`detect` answers ``http1`` for the common request-line starts before its general rule
    (ADR 0073): the rule must give the same answer, and none of them is the h2 preface's."""
    data = start + rest
    assert detect(data) is _detect_http1(data) is detect(start)
    assert not H2_PREFACE.startswith(start)
    assert all(m + b" " in COMMON_STARTS or m in (b"TRACE", b"CONNECT") for m in HTTP1_METHODS)


_SEGMENTS = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=40)


@given(st.one_of(
    st.binary(max_size=400),
    st.builds(lambda lines, token, tail: lines + token + tail,
              st.sampled_from([b"", b"\r\n", b"\n" * 70, b"\r\n" * 40]),
              st.lists(st.sampled_from(list(TCHARS)), max_size=300).map(bytes),
              st.binary(max_size=4))), _SEGMENTS)
def test_a_resumed_scan_answers_as_a_whole_one(data: bytes, cuts: list[int]) -> None:
    """`detect_next` over a prefix delivered in segments, as a driver calls it (resuming while
    `need_more`), answers what `detect` answers for each prefix, whatever the segments."""
    before, i = 0, 0
    for n in cuts * 20:
        if i >= len(data):
            break
        i = min(len(data), i + n)
        got = detect_next(data[:i], before)
        assert got == detect(data[:i])
        if got.protocol != "need_more":
            break
        before = i


def test_a_long_token_resumed_at_every_byte_decides_as_a_whole_one() -> None:
    """A method token trickled one byte per segment up to the cap (the shape that made the
    whole-prefix rule quadratic): every step waits, and the byte that ends it decides."""
    token = b"X" * (MAX_SNIFF_BYTES - 1)
    before = 0
    for i in range(1, len(token) + 1, 97):
        assert detect_next(token[:i], before) is NEED_MORE
        before = i
    assert detect_next(token, before) is NEED_MORE
    assert detect_next(token + b" ", len(token)) == HTTP1
    assert detect_next(token + b"\r", len(token)) == TCP
    assert detect_next(b"\r\n" * 40 + b" ", 80) == TCP  # no token before the space
    assert detect_next(b"\r\n" * 40 + b"GET ", 80) == HTTP1
