"""Fuzz target: the HTTP/2 server codec and the HTTP/2 -> HTTP/1.1 translation.

    .venv/bin/python -m fuzz.h2_request -runs=100000

Two shapes of input, chosen by the first byte:

* even: a request header list built from the input (the four request pseudo-headers with usual
  or fuzzed values, then any names and values, repeated), HPACK-encoded into one HEADERS frame
  after a valid client preface;
* odd: the rest of the input is fed raw after the preface (the frame layer itself).

`H2Codec.feed` may only raise `H2ProtocolError`.  Every request the codec hands on is
serialised the way the HTTP/1 upstream writes it, and a strict origin (h11) must read exactly
one request with the same method and target: nothing the translation accepts may inject a
second request, a header, or a different target into the HTTP/1.1 side.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import hpack
    from hyperframe.frame import HeadersFrame, SettingsFrame

    from fuzz._oracle import origin_reads_request
    from tulle.dataplane.protocols.h2common import H2ProtocolError
    from tulle.dataplane.protocols.h2engine import H2Codec
    from tulle.dataplane.protocols.h2events import RequestReceived
    from tulle.dataplane.protocols.http1 import serialize_request_head

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
_NAMES = [b":method", b":path", b":authority", b":scheme", b"host", b"content-length",
          b"te", b"connection", b"cookie", b"x-a", b"transfer-encoding"]


_DEFAULTS = {b":method": b"GET", b":scheme": b"http", b":path": b"/", b":authority": b"a.example"}


def _header_block(fdp: atheris.FuzzedDataProvider) -> bytes:
    # The four pseudo-headers first, each either its usual value or fuzzed bytes, so that most
    # inputs get past h2's own checks and reach the translation.
    headers = [(n, v if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24)))
               for n, v in _DEFAULTS.items()]
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        pick = fdp.ConsumeIntInRange(0, len(_NAMES))
        name = _NAMES[pick] if pick < len(_NAMES) else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
        headers.append((name, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))))
    encoder = hpack.Encoder()
    return encoder.encode(headers, huffman=False)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    codec = H2Codec(client_side=False)
    if data[0] & 1:
        wire = PREFACE + data[1:]
    else:
        fdp = atheris.FuzzedDataProvider(data[1:])
        frame = HeadersFrame(1, _header_block(fdp), flags=["END_HEADERS", "END_STREAM"])
        wire = PREFACE + frame.serialize()
    try:
        events = codec.feed(wire)
    except H2ProtocolError:
        return
    for ev in events:
        if isinstance(ev, RequestReceived):
            head = ev.head
            method, target, body = origin_reads_request(serialize_request_head(head, False))
            assert method == head.method, (method, head.method)
            assert target == head.path, (target, head.path)
            assert body == b""


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
