"""Fuzz target: the HTTP/1.1 request codec and the re-framing the proxy does on the way out.

    .venv/bin/python -m fuzz.http1_request -runs=100000     # or -max_total_time=60

Any byte string is fed (in two pieces, split where its first byte says) to `RequestCodec`.  It
may only raise `ProtocolError`.  Every request it accepts is serialised the way the HTTP/1
upstream sends it, and a strict origin (h11) must read back exactly that one request: same
method, target and body, no byte left over (a left-over byte is a smuggled request).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from fuzz._oracle import origin_reads_request
    from tulle.dataplane.exchange import Headers, RequestHead
    from tulle.dataplane.protocols.http1 import (
        ProtocolError,
        RequestCodec,
        encode_chunk,
        encode_last_chunk,
        serialize_request_head,
    )


class _Collect:
    def __init__(self) -> None:
        self.done: list[tuple[RequestHead, bytes, Headers | None]] = []
        self._head: RequestHead | None = None
        self._body = b""

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        self._head, self._body = head, b""

    def on_request_body(self, data: bytes) -> None:
        self._body += data

    def on_request_end(self, trailers: Headers | None) -> None:
        assert self._head is not None
        self.done.append((self._head, self._body, trailers))
        self._head = None


def reframe(head: RequestHead, body: bytes, trailers: Headers | None) -> bytes:
    """What the HTTP/1 upstream writes for this request (see upstream/http1.py `H1Stream`)."""
    chunked = bool(body or trailers) and head.content_length is None
    wire = serialize_request_head(head, chunked)
    if chunked:
        return wire + (encode_chunk(body) if body else b"") + encode_last_chunk(trailers)
    return wire + body


def test_one_input(data: bytes) -> None:
    got = _Collect()
    codec = RequestCodec(got, 8192)
    if not data:
        return
    cut, data = data[0] % len(data), data[1:]
    try:
        codec.feed(data[:cut])
        codec.feed(data[cut:])
    except ProtocolError:
        pass
    for head, body, trailers in got.done:
        if head.upgrade:
            continue  # a tunnel: its bytes are relayed as they come
        method, target, seen = origin_reads_request(reframe(head, body, trailers))
        assert method == head.method, (method, head.method)
        assert target == head.path, (target, head.path)
        assert seen == body, (seen[:40], body[:40])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
