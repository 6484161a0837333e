"""Both HTTP/2 codecs, client side: a request reset before its HEADERS left is never sent
(ADR 0132).

The pool writes once per loop turn (`write_soon`), so a request the router cancels in the turn
that opened it (the client's RST_STREAM in the same read, a retry's winner, a deadline) still
has its HEADERS queued.  libnghttp2 cancelled those of a request with a body only; a GET or a
DELETE went out and lived until the upstream answered, and the h2 engine sent every such
request, followed by RST_STREAM.  The peer here records the bytes it is given, decodes every
header block with its own HPACK table (a block the codec encoded but did not send would leave
the two tables apart: the next request would not decode) and answers as an origin would."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.protocols.h2common import CANCEL, REFUSED_STREAM
from tulle.dataplane.protocols.h2events import Event, ResetReceived, ResponseReceived
from tulle.dataplane.protocols.http2 import H2Codec
from tulle.dataplane.protocols.nghttp2 import NgCodec

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS = 0, 1, 3, 4
END_STREAM, END_HEADERS = 0x1, 0x4
ENGINES = pytest.mark.parametrize("codec_class", [NgCodec, H2Codec], ids=["nghttp2", "h2"])
Codec = NgCodec | H2Codec


def frame(typ: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([typ, flags]) + sid.to_bytes(4, "big")
            + payload)


class Upstream:
    """An origin that records every frame it receives and decodes every header block."""

    def __init__(self) -> None:
        self.wire = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        """(type, flags, stream id, payload) of every frame received, in order."""
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self.resets: dict[int, int] = {}
        self._decoder = Decoder()
        self._encoder = Encoder()

    def receive(self, data: bytes) -> None:
        self.wire += data
        if data.startswith(PREFACE):
            data = data[len(PREFACE):]
        while data:
            n = int.from_bytes(data[:3], "big")
            typ, flags, sid = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            payload = data[9:9 + n]
            data = data[9 + n:]
            self.frames.append((typ, flags, sid, payload))
            if typ == HEADERS:  # raises if our table and the codec's no longer agree
                self.heads[sid] = [(bytes(k), bytes(v))
                                   for k, v in self._decoder.decode(payload, raw=True)]
            elif typ == RST_STREAM:
                self.resets[sid] = int.from_bytes(payload, "big")

    def streams_seen(self, typ: int) -> set[int]:
        return {sid for t, _, sid, _ in self.frames if t == typ and sid}

    def settings(self) -> bytes:
        return frame(SETTINGS, 0, 0) + frame(SETTINGS, 0x1, 0)

    def answer(self, sid: int) -> bytes:
        return frame(HEADERS, END_HEADERS | END_STREAM, sid,
                     self._encoder.encode([(b":status", b"200")]))


def connected(codec_class: type[Codec]) -> tuple[Codec, Upstream]:
    codec = codec_class(client_side=True)
    peer = Upstream()
    peer.receive(codec.data_to_send())
    assert codec.feed(peer.settings()) == []
    peer.receive(codec.data_to_send())
    return codec, peer


def head(method: bytes, path: bytes) -> RequestHead:
    # a field new to the HPACK table: encoded and left unsent, it would shift the peer's table
    return RequestHead(method, path, b"o.test", b"http", [(b"x-tenant", b"t-" + path)])


def responses(events: list[Event]) -> list[int]:
    return [e.stream_id for e in events if isinstance(e, ResponseReceived)]


@ENGINES
@pytest.mark.parametrize("method", [b"GET", b"DELETE", b"POST"])
def test_a_request_cancelled_before_its_headers_left_is_never_sent(
        codec_class: type[Codec], method: bytes) -> None:
    codec, peer = connected(codec_class)
    a = codec.send_request(head(b"GET", b"/a"), b"http", True)
    peer.receive(codec.data_to_send())
    body = method == b"POST"
    b = codec.send_request(head(method, b"/b"), b"http", not body)
    if body:
        codec.send_data(b, b"payload")
        codec.send_end(b)
    assert codec.open_outbound_streams == 2
    codec.reset(b, CANCEL)  # in the same loop turn: nothing written since B was opened
    assert codec.open_outbound_streams == 1
    peer.receive(codec.data_to_send())
    assert b not in peer.streams_seen(HEADERS), f"{method!r} {b} was sent after its cancel"
    assert b not in peer.streams_seen(RST_STREAM), "RST_STREAM for a stream never opened"
    assert b not in peer.streams_seen(DATA)
    assert codec.flush() == []  # no reset reported for what the codec itself cancelled
    assert codec.open_outbound_streams == 1 and codec.idle
    # The connection goes on: a new request with the same new field decodes at the peer (the
    # tables agree), and both answers arrive.
    c = codec.send_request(head(b"GET", b"/b"), b"http", True)
    assert c > b
    peer.receive(codec.data_to_send())
    assert peer.heads[c] == [(b":method", b"GET"), (b":scheme", b"http"),
                             (b":authority", b"o.test"), (b":path", b"/b"),
                             (b"x-tenant", b"t-/b")]
    assert sorted(peer.heads) == [a, c]
    assert codec.open_outbound_streams == 2
    events = codec.feed(peer.answer(a) + peer.answer(c))
    assert responses(events) == [a, c]
    assert not [e for e in events if isinstance(e, ResetReceived)]
    peer.receive(codec.data_to_send())
    assert codec.open_outbound_streams == 0
    assert b not in peer.streams_seen(RST_STREAM)


@ENGINES
@pytest.mark.parametrize("method", [b"GET", b"DELETE"])
def test_a_request_cancelled_after_its_headers_left_is_reset_with_cancel(
        codec_class: type[Codec], method: bytes) -> None:
    codec, peer = connected(codec_class)
    a = codec.send_request(head(method, b"/a"), b"http", True)
    peer.receive(codec.data_to_send())
    assert a in peer.heads
    codec.reset(a, CANCEL)
    peer.receive(codec.data_to_send())
    assert peer.resets == {a: CANCEL}
    assert codec.flush() == [] and codec.open_outbound_streams == 0
    b = codec.send_request(head(method, b"/b"), b"http", True)
    peer.receive(codec.data_to_send())
    events = codec.feed(peer.answer(b))
    assert responses(events) == [b] and codec.open_outbound_streams == 0


@ENGINES
def test_of_many_requests_opened_in_one_turn_only_the_cancelled_stay_unsent(
        codec_class: type[Codec]) -> None:
    # Ten requests in one turn, every other one cancelled before the write: the five others
    # leave in order, with their own fields, and are answered.
    codec, peer = connected(codec_class)
    sids = [codec.send_request(head(b"GET", b"/%d" % i), b"http", True) for i in range(10)]
    for sid in sids[1::2]:
        codec.reset(sid, CANCEL)
    assert codec.open_outbound_streams == 5
    peer.receive(codec.data_to_send())
    assert sorted(peer.heads) == sids[0::2] and not peer.resets
    for i, sid in enumerate(sids[0::2]):
        assert (b":path", b"/%d" % (2 * i)) in peer.heads[sid]
    events = codec.feed(b"".join(peer.answer(sid) for sid in sids[0::2]))
    assert responses(events) == sids[0::2] and len(events) == 5
    assert codec.open_outbound_streams == 0


def test_h2_engine_a_head_refused_at_the_write_is_reported_refused() -> None:
    # The h2 engine encodes a head at the write: if the peer lowered its concurrency limit in
    # between, h2 refuses it there, and the request is reported as libnghttp2 reports a
    # request it could not send: reset with REFUSED_STREAM (safe to retry), nothing sent.
    codec, peer = connected(H2Codec)
    sid = codec.send_request(head(b"GET", b"/a"), b"http", True)
    max_streams_0 = frame(SETTINGS, 0, 0, (3).to_bytes(2, "big") + (0).to_bytes(4, "big"))
    assert codec.feed(max_streams_0) == []
    peer.receive(codec.data_to_send())
    assert sid not in peer.streams_seen(HEADERS)
    events = codec.flush()
    assert [(e.stream_id, e.error_code) for e in events if isinstance(e, ResetReceived)] == [
        (sid, REFUSED_STREAM)] and len(events) == 1
    assert codec.open_outbound_streams == 0
