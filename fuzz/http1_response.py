"""Fuzz target: the HTTP/1.1 response codec and the re-framing the proxy does toward its client.

    .venv/bin/python -m fuzz.http1_response -runs=100000

The first byte says whether the request was HEAD, the second where to split the input; the rest
is what an upstream sends.  `ResponseCodec` may only raise `ProtocolError`.  Every response it
completes is serialised the way the HTTP/1 listener sends it to an HTTP/1.1 client, and a strict
client (h11) must read back exactly that one response: same status and body, nothing after it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from fuzz._oracle import origin_reads_response
    from tulle.dataplane.exchange import Headers, ResponseHead
    from tulle.dataplane.protocols.http1 import (
        ProtocolError,
        ResponseCodec,
        encode_chunk,
        encode_last_chunk,
        serialize_response_head,
    )


class _Collect:
    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.body = b""
        self.trailers: Headers | None = None
        self.ended = False

    def on_head(self, head: ResponseHead, end_stream: bool, keep_alive: bool) -> None:
        self.head = head

    def on_informational(self, head: ResponseHead) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_end(self, trailers: Headers | None) -> None:
        self.trailers, self.ended = trailers, True

    def on_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        pass


def reframe(head: ResponseHead, body: bytes, trailers: Headers | None, head_request: bool) -> bytes:
    """What the HTTP/1 listener writes for this response (see listeners/http1.py)."""
    bodyless = head_request or head.status in (204, 304)
    chunked = not bodyless and head.content_length is None
    wire = serialize_response_head(head, chunked=chunked, close=False)
    if chunked:
        return wire + (encode_chunk(body) if body else b"") + encode_last_chunk(trailers)
    return wire + body


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    head_request = bool(data[0] & 1)
    cut = data[1] % (len(data) - 1)
    data = data[2:]
    got = _Collect()
    codec = ResponseCodec(got, 8192)
    codec.start(head_request)
    try:
        codec.feed(data[:cut])
        codec.feed(data[cut:])
        if codec.feed_eof():
            got.ended = True
    except ProtocolError:
        return
    if got.head is None or not got.ended:
        return
    status, seen = origin_reads_response(reframe(got.head, got.body, got.trailers, head_request),
                                         head_request)
    assert status == got.head.status, (status, got.head.status)
    assert seen == (b"" if head_request else got.body), (seen[:40], got.body[:40])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
