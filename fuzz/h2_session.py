"""Fuzz target: two libnghttp2 codecs (client and server, `nghttp2.NgCodec`) run by a script.

    .venv/bin/python -m fuzz.h2_session -runs=1000000

Why a target of its own: `h2_request.py` feeds one request to a fresh server codec, so the C
half of the engine (ng2/shim.c) never queues outbound DATA, never sees a stream reset with
bytes queued, a window update, a GOAWAY with streams open, trailers, or the client side (an
upstream's bytes are as hostile as a client's).  Here the input is a script of operations on a
connected pair: each side sends heads, DATA of any size, ends, trailers, resets, GOAWAYs and
PINGs, blocks and unblocks its writes, acknowledges DATA; the bytes between them are delivered
whole, split at any point, cut short, or interleaved with raw frames the script makes up
(any type, flags, stream id and payload, HPACK blocks from its own encoder).  Run it against
the sanitizer build (ADR 0110) to catch what the C does wrong with memory.

The codecs may only raise `H2ProtocolError`; every event must name a stream id below 2^31,
DATA must say its own length, and a side's "queued" figure must never go negative.
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports():
    import hpack

    from tulle.dataplane.exchange import RequestHead, ResponseHead
    from tulle.dataplane.protocols.h2common import H2Limits, H2ProtocolError
    from tulle.dataplane.protocols.h2events import DataReceived
    from tulle.dataplane.protocols.h2guard import GuardLimits
    from tulle.dataplane.protocols.nghttp2 import NgCodec

_NAMES = [b"x-a", b"content-length", b"te", b"grpc-status", b"cookie", b"authorization",
          b":status", b":method", b":path", b"host", b"connection"]
_SIZES = [0, 1, 100, 16_383, 16_384, 65_535, 65_536, 70_000, 300_000]
_CODES = [0, 1, 2, 7, 8, 11, 0xFFFFFFFF]


def _frame(typ: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((typ, flags)) + struct.pack(">I", sid) \
        + payload


class _Side:
    """One codec and what the script remembers of it."""

    def __init__(self, codec: NgCodec) -> None:
        self.codec = codec
        self.sids: list[int] = [1, 3, 5]
        self.enc = hpack.Encoder()
        self.wire = b""
        """Bytes on the way to this side, not delivered yet."""

    def feed(self, data: bytes) -> None:
        try:
            events = self.codec.feed(data, 0.0)
        except H2ProtocolError:
            return
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            assert 0 <= sid < 2 ** 31, ev
            if isinstance(ev, DataReceived):
                assert ev.flow_length == len(ev.data), (ev.flow_length, len(ev.data))
                self.codec.ack(ev.stream_id, ev.flow_length)
            if sid and sid not in self.sids:
                self.sids.append(sid)


def _fields(fdp: atheris.FuzzedDataProvider) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        pick = fdp.ConsumeIntInRange(0, len(_NAMES))
        name = _NAMES[pick] if pick < len(_NAMES) else fdp.ConsumeBytes(8)
        out.append((name, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 30))))
    return out


def _raw(fdp: atheris.FuzzedDataProvider, side: _Side) -> bytes:
    """A frame the script makes up, for `side` to receive."""
    typ = fdp.ConsumeIntInRange(0, 10)
    flags = fdp.ConsumeIntInRange(0, 255)
    sid = side.sids[fdp.ConsumeIntInRange(0, len(side.sids) - 1)] if fdp.ConsumeBool() \
        else fdp.ConsumeIntInRange(0, 2 ** 31 - 1)
    if typ in (1, 9) and fdp.ConsumeBool():  # HEADERS / CONTINUATION: a real HPACK block
        head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                (b":authority", b"a")] if fdp.ConsumeBool() else [(b":status", b"200")]
        if fdp.ConsumeBool():
            head = [(b":status", b"103")]
        block = side.enc.encode(head + _fields(fdp), huffman=fdp.ConsumeBool())
        if fdp.ConsumeBool():  # a table size update first
            block = bytes((0x20 | fdp.ConsumeIntInRange(0, 31),)) + block
        return _frame(typ, flags, sid, block)
    if typ == 8 and fdp.ConsumeBool():  # WINDOW_UPDATE near and past 2^31 - 1
        inc = fdp.PickValueInList([1, 2 ** 31 - 1, 2 ** 31 - 65_535, 0, 2 ** 32 - 1])
        return _frame(8, 0, sid, struct.pack(">I", inc))
    if typ == 4 and fdp.ConsumeBool():  # SETTINGS with chosen values
        body = b"".join(struct.pack(">HI", fdp.ConsumeIntInRange(1, 9),
                                    fdp.PickValueInList([0, 1, 100, 16_384, 2 ** 24 - 1,
                                                         2 ** 31 - 1, 2 ** 32 - 1]))
                        for _ in range(fdp.ConsumeIntInRange(1, 3)))
        return _frame(4, 0, 0, body)
    return _frame(typ, flags, sid, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))


def _op(fdp: atheris.FuzzedDataProvider, sides: tuple[_Side, _Side]) -> None:
    me = sides[fdp.ConsumeIntInRange(0, 1)]
    peer = sides[1] if me is sides[0] else sides[0]
    codec = me.codec
    sid = me.sids[fdp.ConsumeIntInRange(0, len(me.sids) - 1)]
    op = fdp.ConsumeIntInRange(0, 14)
    if op == 0:  # deliver what is on the way to `me`, whole or split
        wire, me.wire = me.wire, b""
        cut = fdp.ConsumeIntInRange(0, len(wire))
        me.feed(wire[:cut])
        me.feed(wire[cut:])
    elif op == 1:  # drop part of it (a peer that lies about what it sent)
        me.wire = me.wire[:fdp.ConsumeIntInRange(0, len(me.wire))]
    elif op == 2:
        me.wire += _raw(fdp, me)
    elif op == 3:
        peer.wire += codec.data_to_send()
    elif op == 4 and codec.client_side:
        try:
            new = codec.send_request(RequestHead(b"POST", b"/p", b"a", b"http", _fields(fdp)),
                                     b"http", fdp.ConsumeBool())
        except H2ProtocolError:
            return
        me.sids.append(new)
    elif op == 4:
        codec.send_response(sid, ResponseHead(fdp.ConsumeIntInRange(100, 599), _fields(fdp)),
                            fdp.ConsumeBool())
    elif op == 5:
        size = fdp.PickValueInList(_SIZES)
        codec.send_data(sid, bytes(fdp.ConsumeIntInRange(0, 255) for _ in range(3)) * (size // 3))
    elif op == 6:
        codec.send_end(sid, _fields(fdp) if fdp.ConsumeBool() else None)
    elif op == 7:
        codec.reset(sid, fdp.PickValueInList(_CODES))
    elif op == 8:
        codec.goaway(fdp.PickValueInList(_CODES),
                     None if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2 ** 31 - 1))
    elif op == 9:
        codec.write_blocked = not codec.write_blocked
    elif op == 10:
        codec.ack(sid, fdp.ConsumeIntInRange(0, 2 ** 31 - 1))
    elif op == 11:
        for ev in codec.flush():
            assert 0 < getattr(ev, "stream_id", 1) < 2 ** 31
    elif op == 12:
        codec.ping(fdp.ConsumeBytes(8).ljust(8, b"\0"))
    elif op == 13:
        assert codec.pending(sid) >= 0 and codec.open_outbound_streams >= 0
        _ = codec.idle, codec.stream_open(sid), codec.highest_inbound_stream_id
    else:
        codec.send_headers(sid, _fields(fdp), fdp.ConsumeBool())


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    small = H2Limits(max_header_bytes=fdp.PickValueInList([256, 65_536]),
                     stream_window=fdp.PickValueInList([1, 65_535, 262_144]),
                     connection_window=fdp.PickValueInList([65_535, 4_194_304]),
                     high_water=fdp.PickValueInList([1, 16_384, 65_536]),
                     max_concurrent_streams=fdp.PickValueInList([1, 100]),
                     guard=GuardLimits(burst=fdp.PickValueInList([0, 10, 1000])))
    client = _Side(NgCodec(client_side=True, limits=small))
    server = _Side(NgCodec(client_side=False, limits=small))
    client.wire = b""
    server.wire = client.codec.data_to_send()  # the preface
    sides = (client, server)
    for _ in range(64):
        if fdp.remaining_bytes() == 0:
            break
        _op(fdp, sides)
    for side in sides:  # whatever is left on the wire still arrives
        side.feed(side.wire)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
