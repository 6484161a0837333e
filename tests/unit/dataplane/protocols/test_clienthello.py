"""The ClientHello reader: SNI and ALPN from real and hand-built hellos, in any split, and
hostile input (malformed, truncated, oversized, fragmented past the bounds) never raises and is
never guessed at."""

from __future__ import annotations

import random
import ssl
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.dataplane.protocols.clienthello import (
    MAX_CLIENT_HELLO_BYTES,
    MAX_RECORDS,
    ClientHelloReader,
    Hello,
    parse_client_hello,
)


def real_hello(sni: str | None = "api.example.com", alpn: list[str] | None = None) -> bytes:
    """The first flight of a real stdlib client: one record holding its ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def sni_ext(*names: bytes, kind: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", kind, len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn_ext(*protos: bytes) -> bytes:
    body = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(body)) + body)


def hello_body(*extensions: bytes, with_extensions: bool = True) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if with_extensions:
        exts = b"".join(extensions)
        body += struct.pack("!H", len(exts)) + exts
    return body


def message(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(msg: bytes, size: int = 1 << 14) -> bytes:
    out = b""
    for i in range(0, len(msg), size):
        chunk = msg[i:i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
    return out


def read(data: bytes) -> Hello:
    return ClientHelloReader().feed(data)


def read_bytewise(data: bytes) -> Hello:
    r = ClientHelloReader()
    got = r.result
    for i in range(len(data)):
        got = r.feed(data[i:i + 1])
    return got


# -- what a real client sends -------------------------------------------------------------


def test_a_real_client_hello_gives_its_sni_and_alpn_offers() -> None:
    data = real_hello("API.Example.com", ["h2", "http/1.1"])
    got = read(data)
    assert (got.status, got.sni, got.alpn) == ("hello", "api.example.com", ("h2", "http/1.1"))
    assert read_bytewise(data) == got


def test_a_hello_without_sni_or_alpn() -> None:
    got = read(real_hello(None))
    assert (got.status, got.sni, got.alpn) == ("hello", None, ())


def test_a_hello_split_over_many_records_is_reassembled() -> None:
    body = real_hello("a.example", ["h2"])[5:]  # the handshake message of the one record
    got = read(records(body, 97))
    assert (got.status, got.sni, got.alpn) == ("hello", "a.example", ("h2",))


def test_a_first_record_shorter_than_the_message_header_is_reassembled() -> None:
    """RFC 8446 5.1 lets a handshake message's header itself span records.  The early size
    check used to read the next record's header bytes (16 03 01) as the body length and
    called a well-formed hello `too_large`."""
    msg = message(hello_body(sni_ext(b"a.example"), alpn_ext(b"h2")))
    for k in (1, 2, 3):
        data = b"\x16\x03\x01" + k.to_bytes(2, "big") + msg[:k] + records(msg[k:])
        for got in (read(data), read_bytewise(data)):
            assert (got.status, got.sni, got.alpn) == ("hello", "a.example", ("h2",)), k


def test_an_old_hello_without_extensions() -> None:
    got = read(records(message(hello_body(with_extensions=False))))
    assert (got.status, got.sni, got.alpn) == ("hello", None, ())


def test_plaintext_and_other_records_are_not_tls() -> None:
    for data in (b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0", b"\x16\x02", b"\x16\x03\x07",
                 b"\x17\x03\x03\x00\x05hello", b"\x80\x2e\x01"):
        assert read(data).status == "not_tls", data


def test_a_prefix_needs_more() -> None:
    data = real_hello()
    for n in (0, 1, 4, 5, 6, len(data) - 1):
        assert read(data[:n]).status == "need_more", n


# -- hostile input ------------------------------------------------------------------------


def test_malformed_hellos_are_invalid_with_a_reason() -> None:
    bad = {
        "duplicate extension": hello_body(sni_ext(b"a.b"), sni_ext(b"c.d")),
        "two host names": hello_body(sni_ext(b"a.b", b"c.d")),
        "empty host name": hello_body(sni_ext(b"")),
        "host name with a NUL": hello_body(sni_ext(b"a\x00.b")),
        "host name with a space": hello_body(sni_ext(b"a b")),
        "empty ALPN protocol": hello_body(alpn_ext(b"h2", b"")),
        "ALPN list shorter than said": hello_body(ext(16, b"\x00\x09\x02h2")),
        "extensions longer than the body": hello_body(sni_ext(b"a.b"))[:-1],
        "trailing bytes after extensions": hello_body(sni_ext(b"a.b")) + b"\x00",
        "no cipher suites": b"\x03\x03" + bytes(32) + b"\x00\x00\x00\x01\x00\x00\x00",
        "no compression methods": b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x00",
        "truncated random": b"\x03\x03" + bytes(10),
    }
    for what, body in bad.items():
        got = read(records(message(body)))
        assert got.status == "invalid", what
        assert got.reason, what
        assert parse_client_hello(body).status == "invalid", what


def test_records_that_do_not_carry_a_client_hello_are_invalid() -> None:
    hello = real_hello()
    assert read(b"\x16\x03\x01\x00\x00").status == "invalid"  # an empty record
    assert read(b"\x16\x03\x01\x40\x01" + bytes(10)).status == "invalid"  # over 2^14
    assert read(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00").status == "invalid"  # ServerHello
    split = records(hello[5:], 40)
    assert read(split[:45] + b"\x17\x03\x03\x00\x01x").status == "invalid"  # not handshake
    extra = records(hello[5:] + b"\x01\x00\x00\x00")  # a second message after it
    assert read(extra).status == "invalid"


def test_an_oversized_hello_is_too_large_before_it_is_buffered() -> None:
    body = hello_body(ext(0xFFAA, bytes(MAX_CLIENT_HELLO_BYTES)))
    whole = records(message(body), 1 << 14)
    assert read(whole[:5 + 4]).status == "too_large"  # the message header says how long
    assert read_bytewise(whole[:5 + 4]).status == "too_large"
    assert read(whole).status == "too_large"
    # exactly the bound is read (and judged on its contents: zeros are no ClientHello)
    assert read(records(message(bytes(MAX_CLIENT_HELLO_BYTES)), 4000)).status == "invalid"


def test_a_hello_split_over_too_many_records_is_too_large() -> None:
    body = real_hello()[5:]
    assert read(records(body, 1)).status == "too_large"
    fits = -(-len(body) // MAX_RECORDS)  # exactly MAX_RECORDS records (or fewer)
    assert read(records(body, fits)).status == "hello"
    assert read(records(body, -(-len(body) // (MAX_RECORDS + 1)))).status == "too_large"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_after_a_handshake_header_never_raise(tail: bytes) -> None:
    data = b"\x16\x03\x01" + tail
    got = read(data)
    assert got.status in ("need_more", "not_tls", "hello", "invalid", "too_large")
    assert read_bytewise(data) == got


def test_mutated_real_hellos_never_raise_and_split_the_same() -> None:
    rng = random.Random(7)
    base = bytearray(real_hello("svc.ns.svc.cluster.local", ["h2", "http/1.1"]))
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(5, len(data))] = rng.randrange(256)
        got = read(bytes(data))
        assert got.status in ("hello", "invalid", "need_more", "too_large")
        if got.status == "hello" and got.sni is not None:
            assert got.sni == got.sni.lower() and " " not in got.sni
        cut = rng.randrange(1, len(data))
        r = ClientHelloReader()
        r.feed(bytes(data[:cut]))
        assert r.feed(bytes(data[cut:])) == got
