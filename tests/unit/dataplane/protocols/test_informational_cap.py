"""Both HTTP/2 codecs, client side, pass on at most `MAX_INFORMATIONAL` 1xx heads a stream,
then reset it and report `InformationalFlood`, however many the read holds (ADR 0115)."""

from __future__ import annotations

import pytest

from tulle.dataplane.exchange import MAX_INFORMATIONAL, RequestHead
from tulle.dataplane.protocols.h2common import PROTOCOL_ERROR
from tulle.dataplane.protocols.h2events import InformationalFlood, InformationalReceived
from tulle.dataplane.protocols.http2 import H2Codec
from tulle.dataplane.protocols.nghttp2 import NgCodec


def frame(typ: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([typ, flags]) + sid.to_bytes(4, "big")
            + payload)


def amplified_103s(sid: int, size: int) -> bytes:
    """`size` bytes of 103 heads, each naming a 4 KB dynamic-table entry 31 times (~124 KB
    decoded from 36 bytes: ADR 0110's flood)."""
    first = b"\x08\x03103" + b"\x40\x03x-a" + b"\x7f\xa1\x1e" + b"a" * 4000
    out = [frame(1, 4, sid, first)]
    block = frame(1, 4, sid, b"\x08\x03103" + b"\xbe" * 31)
    return b"".join(out) + block * ((size - len(out[0])) // len(block))


def rst_streams(wire: bytes) -> list[tuple[int, int]]:
    """(stream id, error code) of every RST_STREAM in `wire` (frames after the preface)."""
    out = []
    if wire.startswith(b"PRI * HTTP/2.0"):
        wire = wire[24:]
    while len(wire) >= 9:
        n = int.from_bytes(wire[:3], "big")
        if wire[3] == 3:
            out.append((int.from_bytes(wire[5:9], "big"), int.from_bytes(wire[9:13], "big")))
        wire = wire[9 + n:]
    return out


@pytest.mark.parametrize("codec_class", [NgCodec, H2Codec], ids=["nghttp2", "h2"])
def test_one_read_of_a_1xx_flood_yields_the_cap_then_one_flood_event_and_a_reset(
        codec_class: type[NgCodec] | type[H2Codec]) -> None:
    c = codec_class(client_side=True)
    sid = c.send_request(RequestHead(b"GET", b"/", b"a", b"http", []), b"http", True)
    c.data_to_send()
    events = c.feed(frame(4, 0, 0, b"") + amplified_103s(sid, 32 * 1024))
    kinds = [type(e) for e in events if isinstance(e, (InformationalReceived,
                                                       InformationalFlood))]
    assert kinds == [InformationalReceived] * MAX_INFORMATIONAL + [InformationalFlood]
    assert (sid, PROTOCOL_ERROR) in rst_streams(c.data_to_send())


@pytest.mark.parametrize("codec_class", [NgCodec, H2Codec], ids=["nghttp2", "h2"])
def test_the_cap_of_1xx_heads_then_a_final_answer_passes_whole(
        codec_class: type[NgCodec] | type[H2Codec]) -> None:
    c = codec_class(client_side=True)
    sid = c.send_request(RequestHead(b"GET", b"/", b"a", b"http", []), b"http", True)
    c.data_to_send()
    one = frame(1, 4, sid, b"\x08\x03103")
    final = frame(1, 5, sid, b"\x88")  # :status 200, END_STREAM
    events = c.feed(frame(4, 0, 0, b"") + one * MAX_INFORMATIONAL + final)
    assert [type(e).__name__ for e in events if not type(e).__name__.startswith("Send")] == (
        ["InformationalReceived"] * MAX_INFORMATIONAL + ["ResponseReceived"])
    assert rst_streams(c.data_to_send()) == []
