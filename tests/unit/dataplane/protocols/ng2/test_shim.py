"""The C half of the libnghttp2 engine (ng2/shim.c) under what a memory audit found (ADR 0110).

HPACK lets ~40 bytes on the wire name a 4 KB dynamic-table entry 31 times, so a read of such
header blocks decoded into an arena hundreds of times its size: shim.c now pauses the read once
the arena holds TL_KEEP bytes and the codec collects before it feeds the rest.  These tests
hold the bound (measured in a process of its own: the arena is C memory) and check that the
events of a read that paused are the events of one that did not."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hpack import Encoder
from tests.support import h2raw

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.protocols.h2common import H2Limits
from tulle.dataplane.protocols.h2events import (
    DataReceived,
    EndReceived,
    RequestReceived,
    ResetReceived,
    StreamRejected,
)
from tulle.dataplane.protocols.nghttp2 import NgCodec

TL_KEEP = 262_144
"""shim.c's bound on what one read fills before it pauses."""
ROOT = Path(__file__).resolve().parents[5]
"""The checkout (the measuring processes import `tests.support` from it)."""
measures_rss = pytest.mark.skipif(
    "asan" in os.environ.get("LD_PRELOAD", ""),
    reason="an RSS figure needs glibc's allocator: ASan's quarantine holds what is freed")

_AMPLIFY = textwrap.dedent("""
    import resource, struct
    from hpack import Encoder
    from tulle.dataplane.protocols.h2common import H2Limits
    from tulle.dataplane.protocols.h2guard import GuardLimits
    from tulle.dataplane.protocols.nghttp2 import NgCodec

    def frame(typ, flags, sid, payload):
        return (struct.pack(">I", len(payload))[1:] + bytes((typ, flags))
                + struct.pack(">I", sid) + payload)

    enc = Encoder()
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
            (b":authority", b"a")] + [(b"x-a", b"a" * 4000)] * 31
    wire = b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" + frame(4, 0, 0, b"")
    for i in range(1000):  # each block ~40 bytes on the wire, ~124 KB decoded
        sid = 2 * i + 1
        wire += frame(1, 0x5, sid, enc.encode(head, huffman=False))
        wire += frame(3, 0, sid, struct.pack(">I", 8))  # RST_STREAM frees the slot
    codec = NgCodec(client_side=False, limits=H2Limits(guard=GuardLimits()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    events = codec.feed(wire, 0.0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(len(wire), len(events), after - before)
""")


@measures_rss
def test_one_read_of_amplifying_header_blocks_fills_a_bounded_arena() -> None:
    # 1,000 HEADERS + RST_STREAM pairs in one 61 KB read: every block decodes to ~124 KB (a
    # 431 each, above the 64 KB head limit, below the 128 KB connection limit).  Before the
    # fix all of it went into the arena at once, and the codec copied it: +237 MiB of peak RSS.
    out = subprocess.run([sys.executable, "-c", _AMPLIFY], env=os.environ.copy(),
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    wire, events, peak_kib = (int(x) for x in out.split())
    assert wire < 64 * 1024 and events == 2000
    assert peak_kib < 32 * 1024, f"one {wire}-byte read grew the peak RSS by {peak_kib} KiB"


_DRAINED = textwrap.dedent("""
    from hpack import Encoder
    from tests.support import h2raw
    from tulle.dataplane.exchange import ResponseHead
    from tulle.dataplane.protocols.nghttp2 import NgCodec

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    codec = NgCodec(client_side=False)
    codec.data_to_send()
    codec.feed(h2raw.PREFACE + h2raw.settings() + h2raw.settings(ack=True))
    enc = Encoder()
    sids = range(1, 201, 2)
    for sid in sids:
        codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, sid,
                               enc.encode(h2raw.request())))
        codec.send_response(sid, ResponseHead(200, []), False)
    codec.data_to_send()
    base = rss_kib()
    for sid in sids:  # a burst the client's windows hold back: 300 KB queued on each
        codec.send_data(sid, b"x" * 300_000)
    opened = h2raw.window_update(0, 2**31 - 1 - 65_535)
    for _ in range(100):  # the client opens every window: it all drains
        codec.feed(opened + b"".join(h2raw.window_update(sid, 1 << 20) for sid in sids))
        opened = b""
        if not codec.data_to_send():
            break
    assert sum(codec.pending(sid) for sid in sids) == 0 and not codec.idle
    print(rss_kib() - base)
""")


@measures_rss
def test_a_drained_burst_is_given_back_while_its_streams_stay_open() -> None:
    # 100 open streams (long gRPC streams, say) each queued a 300 KB burst and sent it: each
    # queue kept its room for the stream's life, +37 MiB of RSS held after the drain.
    out = subprocess.run([sys.executable, "-c", _DRAINED], env=os.environ.copy(),
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    held_kib = int(out)
    assert held_kib < 16 * 1024, f"{held_kib} KiB held after the queues drained"


def server(limits: H2Limits | None = None) -> NgCodec:
    codec = NgCodec(client_side=False, limits=limits or H2Limits())
    codec.data_to_send()
    assert codec.feed(h2raw.PREFACE + h2raw.settings() + h2raw.settings(ack=True)) == []
    codec.data_to_send()
    return codec


def test_header_blocks_decoded_across_pauses_keep_their_fields_and_order() -> None:
    # Forty 60 KB heads (under the 64 KB limit) in one read: the read pauses every few blocks,
    # one pause falls inside a block, and every request still carries its own fields.
    codec = server()
    enc = Encoder()
    wire = b""
    for i in range(40):
        sid = 2 * i + 1
        fields = [*h2raw.request("GET", f"/{i}"), *[(b"x-a", b"%d-" % i + b"a" * 4000)] * 14]
        wire += h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, sid,
                            enc.encode(fields))
        wire += h2raw.rst(sid)
    events = codec.feed(wire)  # 40 x 56 KB decoded: the arena fills TL_KEEP eight times
    assert [type(e) for e in events] == [RequestReceived, ResetReceived] * 40
    for i in range(40):
        req = events[2 * i]
        assert isinstance(req, RequestReceived) and req.stream_id == 2 * i + 1
        assert req.head.path == b"/%d" % i
        assert req.head.headers == [(b"x-a", b"%d-" % i + b"a" * 4000)] * 14


def test_a_read_that_ends_on_a_pause_still_reports_the_frame_it_ends() -> None:
    # The DATA chunk that takes the arena past TL_KEEP is the last bytes of the read: nghttp2
    # has used them all but reports the frame's END_STREAM only when called again.
    codec = server(H2Limits(stream_window=1 << 20, connection_window=4 << 20))
    codec.feed(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, 1,
                           Encoder().encode(h2raw.request("POST"))))
    wire = h2raw.data(1, b"d" * 16_384) * 16 + h2raw.data(1, b"e" * 16_384, end=True)
    events = codec.feed(wire)
    assert [type(e) for e in events] == [DataReceived] * 17 + [EndReceived]
    body = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert body == b"d" * 16 * 16_384 + b"e" * 16_384


def test_a_header_field_that_ends_a_paused_read_still_completes_its_block() -> None:
    # The same at a header block: the pause falls on the last field of the read's last block.
    codec = server()
    enc = Encoder()
    wire = b""
    for i in range(5):  # 5 x 60 KB of finished blocks: past TL_KEEP before the last one
        fields = [*h2raw.request(), *[(b"x-a", b"a" * 4000)] * 14]
        wire += h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, 2 * i + 1,
                            enc.encode(fields))
    last = enc.encode([*h2raw.request("GET", "/last")])
    wire += h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, 11, last)
    events = codec.feed(wire)
    assert [type(e) for e in events] == [RequestReceived] * 6
    assert isinstance(events[-1], RequestReceived) and events[-1].head.path == b"/last"
    assert not [e for e in events if isinstance(e, StreamRejected)]


def test_a_request_cancelled_before_its_headers_left_is_uncounted_once() -> None:
    # A is open; B is reset while its HEADERS are still queued.  nghttp2 opens and closes B
    # at the next write all the same: that close counted B down a second time (A's count was
    # lost: the pool saw room for one stream more than the peer allows, per cancel) and
    # reported a reset the codec had asked for itself.
    codec = NgCodec(client_side=True)
    codec.data_to_send()
    head = RequestHead(b"POST", b"/x", b"o.test", b"http", [])
    a = codec.send_request(head, b"http", False)
    codec.data_to_send()
    b = codec.send_request(head, b"http", False)
    assert codec.open_outbound_streams == 2
    codec.reset(b)
    assert codec.open_outbound_streams == 1
    codec.data_to_send()
    assert codec.flush() == []
    assert codec.stream_open(a) and codec.open_outbound_streams == 1
    codec.send_data(a, b"body")
    codec.send_end(a)
    assert codec.data_to_send()  # A goes on


def frames(wire: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of each frame in `wire`."""
    out = []
    while wire:
        n = int.from_bytes(wire[:3], "big")
        out.append((wire[3], int.from_bytes(wire[5:9], "big") & 0x7FFFFFFF, wire[9:9 + n]))
        wire = wire[9 + n:]
    return out


@pytest.mark.parametrize("high_water", [33_554_432, 67_108_864])
@pytest.mark.parametrize("client_side", [True, False])
def test_windows_past_the_protocols_maximum_are_capped_at_it(high_water: int,
                                                             client_side: bool) -> None:
    # The drivers ask for a connection window of 64 x buffer_high_water_bytes, which the
    # settings allow up to 64 MiB: from 32 MiB on, that is past 2^31 - 1, and every HTTP/2
    # connection failed (MemoryError "nghttp2 session", OverflowError at 64 MiB).
    codec = NgCodec(client_side=client_side, limits=H2Limits(
        stream_window=4 * high_water, connection_window=64 * high_water, high_water=high_water))
    wire = codec.data_to_send()
    if client_side:
        assert wire.startswith(h2raw.PREFACE)
        wire = wire[len(h2raw.PREFACE):]
    (settings, window) = frames(wire)
    assert settings[0] == h2raw.SETTINGS
    values = dict(struct.unpack(">HI", settings[2][i:i + 6]) for i in range(0, len(settings[2]), 6))
    assert values[0x4] == 4 * high_water  # SETTINGS_INITIAL_WINDOW_SIZE: 128 or 256 MiB
    assert window[:2] == (h2raw.WINDOW_UPDATE, 0)
    assert 65_535 + struct.unpack(">I", window[2])[0] == 2**31 - 1
