"""Sniffing the first bytes of a connection: HTTP/1 methods, the HTTP/2 preface, TLS, the rest."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.protocols.detect import (
    H2_PREFACE,
    HTTP1_METHODS,
    MAX_SNIFF_BYTES,
    Detection,
    detect,
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
    assert detect(b"PRI * HTTP/1.1\r\n\r\n").protocol == "tcp"


@pytest.mark.parametrize("data", [
    b"get / HTTP/1.1\r\n",  # methods are case-sensitive
    b"GET\t/",
    b"GETS /",
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
