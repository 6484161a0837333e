"""The libnghttp2 engine against a raw peer: CONTINUATION floods, HPACK bombs, stalled
windows, padding, split header blocks, and no per-stream state left after many streams.

Frames are written by hand (`tests/support/h2raw.py`), so nothing on the peer's side refuses
to send what an attacker sends; the answers are read back with a real h2 peer."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import Encoder
from tests.support import h2raw

from tulle.dataplane.exchange import ResponseHead
from tulle.dataplane.protocols.h2common import H2Abuse, H2Limits, H2ProtocolError
from tulle.dataplane.protocols.h2events import (
    DataReceived,
    EndReceived,
    RequestReceived,
    SendDrained,
)
from tulle.dataplane.protocols.h2guard import GuardLimits
from tulle.dataplane.protocols.nghttp2 import NgCodec

CONTINUATION = 0x9


def server(limits: H2Limits | None = None) -> NgCodec:
    codec = NgCodec(client_side=False, limits=limits or H2Limits())
    codec.data_to_send()  # our SETTINGS
    assert codec.feed(h2raw.PREFACE + h2raw.settings() + h2raw.settings(ack=True)) == []
    codec.data_to_send()  # the SETTINGS ACK
    return codec


def goaway_code(wire: bytes) -> int | None:
    """The error code of the GOAWAY in what the codec wrote, read with a real h2 client."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for ev in client.receive_data(wire):
        if isinstance(ev, h2.events.ConnectionTerminated):
            return int(ev.error_code or 0)
    return None


def block(enc: Encoder, fields: list[tuple[bytes, bytes]]) -> bytes:
    return enc.encode(fields)


def test_a_continuation_flood_is_cut_off_with_goaway() -> None:
    # CVE-2024-27316 and friends: HEADERS without END_HEADERS, then CONTINUATION forever.
    codec = server()
    enc = Encoder()
    wire = h2raw.frame(h2raw.HEADERS, 0, 1, block(enc, h2raw.request()))
    wire += h2raw.frame(CONTINUATION, 0, 1, b"") * 10_000
    with pytest.raises(H2Abuse) as err:
        codec.feed(wire)
    assert err.value.kind == "h2_continuation_flood"
    assert goaway_code(codec.data_to_send()) == 0xB  # ENHANCE_YOUR_CALM


def test_continuation_frames_carrying_literal_fields_cannot_grow_a_block_past_the_limit() -> None:
    codec = server(H2Limits(max_header_bytes=4096))
    wire = h2raw.frame(h2raw.HEADERS, 0, 1, block(Encoder(), h2raw.request()))
    literal = b"\x00\x03x-a\x7f\xdd\x0a" + b"a" * 1500  # a 1,500-byte literal field
    wire += h2raw.frame(CONTINUATION, 0, 1, literal) * 7
    with pytest.raises(H2ProtocolError) as err:
        codec.feed(wire)
    assert err.value.kind == "header_too_large"
    assert goaway_code(codec.data_to_send()) == 0xB


def test_an_hpack_bomb_is_a_connection_error_before_it_is_decoded_in_full() -> None:
    # One 4 KB entry in the dynamic table, then a block of one-byte references to it: each
    # byte decodes to 4 KB.  The decoded size is counted in C and stops at twice the limit.
    codec = server(H2Limits(max_header_bytes=16_384))
    enc = Encoder()
    first = block(enc, [*h2raw.request(), (b"x-bomb", b"b" * 4000)])
    events = codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, 1,
                                    first))
    assert [type(e) for e in events] == [RequestReceived]
    index = b"\xbe"  # dynamic table entry 62: x-bomb (the newest entry)
    bomb = block(enc, h2raw.request()) + index * 10_000  # 40 MB once decoded
    with pytest.raises(H2ProtocolError) as err:
        codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, 3, bomb))
    assert err.value.kind == "header_too_large"
    assert goaway_code(codec.data_to_send()) == 0xB  # ENHANCE_YOUR_CALM


def test_a_settings_flood_is_refused_by_the_guard_before_nghttp2_parses_it() -> None:
    codec = server(H2Limits(guard=GuardLimits(burst=20)))
    with pytest.raises(H2Abuse) as err:
        codec.feed(h2raw.settings() * 21)
    assert err.value.kind == "h2_settings_flood"
    assert goaway_code(codec.data_to_send()) == 0xB


def test_a_header_block_split_across_reads_is_decoded_whole() -> None:
    codec = server()
    enc = Encoder()
    fields = [*h2raw.request("POST", "/split"), (b"x-long", b"v" * 3000)]
    raw = block(enc, fields)
    wire = (h2raw.frame(h2raw.HEADERS, 0, 1, raw[:1000])
            + h2raw.frame(CONTINUATION, 0, 1, raw[1000:2000])
            + h2raw.frame(CONTINUATION, h2raw.END_HEADERS, 1, raw[2000:]))
    events = []
    for i in range(0, len(wire), 7):  # seven bytes at a time
        events += codec.feed(wire[i:i + 7])
    (ev,) = events
    assert isinstance(ev, RequestReceived)
    assert ev.head.path == b"/split" and (b"x-long", b"v" * 3000) in ev.head.headers


def test_padding_is_not_the_drivers_to_acknowledge() -> None:
    codec = server(H2Limits(stream_window=65_535, connection_window=65_535))
    codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, 1,
                           block(Encoder(), h2raw.request("POST"))))
    padded = bytes([200]) + b"p" * 1000 + b"\0" * 200  # PADDED: pad length, data, padding
    events = codec.feed(h2raw.frame(h2raw.DATA, 0x8, 1, padded) * 29
                        + h2raw.frame(h2raw.DATA, 0x8 | h2raw.END_STREAM, 1, padded))
    assert [type(e) for e in events] == [DataReceived] * 30 + [EndReceived]
    for ev in events[:-1]:
        assert isinstance(ev, DataReceived) and ev.data == b"p" * 1000
        codec.ack(1, ev.flow_length)
    wire = codec.data_to_send()
    increments = []  # every WINDOW_UPDATE on the connection: the whole frame is returned
    while wire:
        length = int.from_bytes(wire[:3], "big")
        if wire[3] == h2raw.WINDOW_UPDATE and int.from_bytes(wire[5:9], "big") == 0:
            increments.append(struct.unpack(">I", wire[9:13])[0])
        wire = wire[9 + length:]
    # nghttp2 returns the window once half of it (32,767) is consumed.  The padding of all 30
    # frames (6,030 bytes) was consumed on receipt, so the 27th acknowledgement crosses it.
    assert increments == [30 * 201 + 27 * 1000]


def test_a_stalled_window_queues_bounded_and_resumes() -> None:
    # The peer opens a stream with a zero window and never reads: DATA waits here, the
    # producer is told to pause once (above high water), and nothing more is sent.
    codec = server(H2Limits(high_water=10_000))
    zero = h2raw.frame(h2raw.SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0))
    codec.feed(zero + h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, 1,
                                  block(Encoder(), h2raw.request())))
    codec.send_response(1, ResponseHead(200, []), False)
    assert codec.send_data(1, b"d" * 20_000)  # above high water: pause
    assert not codec.send_data(1, b"")  # said once
    codec.data_to_send()
    assert codec.pending(1) == 20_000 and not codec.idle
    events = codec.feed(h2raw.window_update(1, 20_000))
    assert [type(e) for e in events] == [SendDrained]
    assert codec.pending(1) == 0


def test_thousands_of_streams_leave_no_state_behind() -> None:
    codec = server(H2Limits(guard=GuardLimits()))
    enc = Encoder()
    for i in range(5_000):
        sid = 2 * i + 1
        events = codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM,
                                        sid, block(enc, [*h2raw.request(),
                                                         (b"x-request-id", b"%d" % i)])))
        assert [type(e) for e in events] == [RequestReceived]
        codec.send_response(sid, ResponseHead(200, [(b"x-r", b"1")]), False)
        codec.send_data(sid, b"ok")
        codec.send_end(sid, [(b"grpc-status", b"0")])
        codec.data_to_send()
    assert codec.idle and not codec._unanswered and not codec._ours
    assert not codec.stream_open(9_999)  # closed streams are forgotten by nghttp2 too


def test_a_request_reset_before_its_headers_left_sends_nothing_and_frees_its_slot() -> None:
    # The router cancels an attempt in the same loop turn it opened it: nghttp2 cancels the
    # queued HEADERS, and the connection's count of open streams (its capacity) is restored.
    from tulle.dataplane.exchange import RequestHead
    codec = NgCodec(client_side=True)
    codec.data_to_send()
    head = RequestHead(b"POST", b"/x", b"o.test", b"http", [])
    sid = codec.send_request(head, b"http", False)
    codec.send_data(sid, b"body")
    assert codec.open_outbound_streams == 1
    codec.reset(sid)
    assert codec.data_to_send() == b""  # no HEADERS, no DATA, no RST_STREAM for an idle id
    assert codec.open_outbound_streams == 0 and codec.idle
    again = codec.send_request(head, b"http", True)
    assert again > sid and codec.open_outbound_streams == 1


def test_an_early_complete_response_goes_out_before_the_reset_that_ends_the_request() -> None:
    # RFC 9113 8.1: a complete response, then RST_STREAM(NO_ERROR) so the client stops
    # sending the body.  nghttp2 would drop a response still queued behind the reset.
    codec = server()
    codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, 1,
                           block(Encoder(), h2raw.request("POST"))))
    codec.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                           (b"grpc-status", b"14")], True)
    codec.reset(1, 0)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, h2raw.request("POST"))
    events = client.receive_data(codec.data_to_send())
    kinds = [type(e).__name__ for e in events if not isinstance(
        e, (h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged,
            h2.events.WindowUpdated))]
    assert kinds == ["ResponseReceived", "StreamEnded", "StreamReset"]


def test_a_field_holding_a_nul_is_refused_never_split_into_other_fields() -> None:
    # The head crosses into C as one NUL-joined buffer: a NUL inside a value must not become
    # a field boundary (header injection); the head is refused instead.
    codec = server()
    codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, 1,
                           block(Encoder(), h2raw.request("POST"))))
    assert not codec.send_response(1, ResponseHead(200, [(b"x-a", b"1\0x-injected\0yes")]),
                                   True)
    assert codec.send_response(1, ResponseHead(200, [(b"x-a", b"1")]), False)
    codec.send_end(1, [(b"grpc-status", b"0\0x-injected\0yes")])  # trailers: reset instead
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                  header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, h2raw.request("POST"))
    events = client.receive_data(codec.data_to_send())
    heads = [e.headers for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert heads == [[(b":status", b"200"), (b"x-a", b"1")]]
    assert not any(isinstance(e, h2.events.TrailersReceived) for e in events)
    assert [e.error_code for e in events if isinstance(e, h2.events.StreamReset)] == [2]
