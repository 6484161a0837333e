"""Coverage-guided fuzz (atheris / libFuzzer) of the HTTP/1 request codec, differential.

    .venv/bin/python tests/fuzz/fuzz_http1_request.py -max_total_time=60 [corpus_dir]

The input is what a client sends (split into reads by its first byte).  Whatever the codec
passes on, re-framed exactly as the upstream side writes it, must be framed the same way by a
strict origin (h11): the same requests with the same methods, targets and bodies, or fewer
when the origin refuses a field the proxy let through, never another request (smuggling).
The codec may raise `ProtocolError` and nothing else.  `test_fuzz_harness.py` runs this for a
few thousand inputs in CI; the hypothesis properties in
tests/unit/dataplane/protocols/test_http1_differential.py cover the same ground from grammar.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    import h11

    from tulle.dataplane.exchange import Headers, RequestHead
    from tulle.dataplane.protocols.http1 import (
        ProtocolError,
        RequestCodec,
        encode_chunk,
        encode_last_chunk,
        serialize_request_head,
    )

SEED = (b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n"
        b"hello"
        b"PUT /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n"
        b"X-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n")


class Proxy:
    def __init__(self) -> None:
        self.out = bytearray()
        self.seen: list[tuple[bytes, bytes, bytes]] = []
        self.chunked = False
        self.body = b""
        self.head: RequestHead | None = None

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        self.head, self.body = head, b""
        self.chunked = has_body and head.content_length is None
        self.out += serialize_request_head(head, self.chunked)

    def on_request_body(self, data: bytes) -> None:
        self.body += data
        self.out += encode_chunk(data) if self.chunked else data

    def on_request_end(self, trailers: Headers | None) -> None:
        if self.chunked:
            self.out += encode_last_chunk(trailers)
        assert self.head is not None
        self.seen.append((self.head.method, self.head.path, self.body))


def origin(data: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], bool]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    got: list[tuple[bytes, bytes, bytes]] = []
    method = target = body = b""
    while True:
        try:
            ev = conn.next_event()
        except h11.ProtocolError:
            return got, False
        if isinstance(ev, h11.Request):
            method, target, body = bytes(ev.method), bytes(ev.target), b""
        elif isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            got.append((method, target, body))
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        else:
            return got, True


def one_input(data: bytes) -> None:
    if not data:
        return
    step = data[0] % 64 + 1
    wire = data[1:]
    proxy = Proxy()
    codec = RequestCodec(proxy, 65536)
    try:
        for i in range(0, len(wire), step):
            codec.feed(wire[i:i + step])
    except ProtocolError:
        pass
    got, clean = origin(bytes(proxy.out))
    if clean:
        assert got == proxy.seen, (got, proxy.seen)
    else:
        assert got == proxy.seen[:len(got)], (got, proxy.seen)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
