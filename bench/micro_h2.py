"""The HTTP/2 codec's cost per gRPC unary exchange, h2 engine against the libnghttp2 engine.

    .venv/bin/python -m bench.micro_h2 [-n 2000] [--rounds 3] [--ngh2 DIR]

Why: ADR 0051 chose the engine on this figure.  No sockets and no proxy: what one codec does
for one exchange, on both of the proxy's sides, with the bytes a real gRPC peer sends:

* server side (downstream): feed a request (HEADERS with a unique `x-request-id`, one DATA
  frame, END_STREAM), then send a response head, one DATA frame and `grpc-status` trailers,
  and take the bytes to write;
* client side (upstream): send that request, feed the origin's response (head, DATA,
  trailers) and take the bytes.

The peers' bytes are recorded once with h2 (one connection, so HPACK's dynamic table is in
play as it is in production) and replayed to each engine.  Engines alternate in ABAB order
within each round; the figure is CPU µs per exchange (process time), the median over the
rounds with the spread (min-max).  Both engines are checked to produce the same events first.

`--ngh2 DIR` adds the server side alone for the `ngh2` package (a libnghttp2 binding on PyPI
that ADR 0051 weighed), imported from DIR (an unpacked wheel: it is not a dependency), driven
with its own events and no translation into ours, next to our two engines' server side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from tulle.dataplane.exchange import RequestHead, ResponseHead
from tulle.dataplane.protocols.h2common import H2Limits
from tulle.dataplane.protocols.h2events import DataReceived, EndReceived, RequestReceived
from tulle.dataplane.protocols.http2 import H2Codec
from tulle.dataplane.protocols.nghttp2 import NgCodec

BODY = b"\x00\x00\x00\x00\x0b" + b"x" * 11  # a gRPC message of 11 bytes
REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/helloworld.Greeter/SayHello"),
       (b":authority", b"greeter.test:50051"), (b"content-type", b"application/grpc"),
       (b"te", b"trailers"), (b"user-agent", b"grpc-python/1.60"),
       (b"grpc-accept-encoding", b"identity,deflate,gzip")]
RESP = [(b":status", b"200"), (b"content-type", b"application/grpc"),
        (b"grpc-accept-encoding", b"identity,deflate,gzip")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
LIMITS = H2Limits()


def _cfg(client: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=client, header_encoding=None)


def record_requests(n: int) -> tuple[bytes, list[bytes]]:
    """What a gRPC client sends: its preface, then each request (head, message, end)."""
    c = h2.connection.H2Connection(_cfg(True))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
    c.increment_flow_control_window(1 << 30)
    c.local_settings.acknowledge()  # (the engines' ACK is not read back)
    c.remote_settings.update({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1 << 30})
    c.remote_settings.acknowledge()
    preface = c.data_to_send()
    out = []
    for i in range(n):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [*REQ, (b"x-request-id", b"%032x" % (i * 7919))])
        c.outbound_flow_control_window = 1 << 30  # (the engines' WINDOW_UPDATEs are not read)
        c.send_data(sid, BODY, end_stream=True)
        out.append(c.data_to_send())
        c.streams.pop(sid, None)
    return preface, out


def record_responses(n: int) -> tuple[bytes, list[bytes]]:
    """What a gRPC origin sends back for stream 1, 3, 5, ...: head, message, trailers."""
    s = h2.connection.H2Connection(_cfg(False))
    s.initiate_connection()
    s.increment_flow_control_window(1 << 30)
    preface = s.data_to_send()
    c = h2.connection.H2Connection(_cfg(True))  # only to open the streams on the origin
    c.initiate_connection()
    s.receive_data(c.data_to_send())
    s.data_to_send()
    out = []
    for _ in range(n):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, REQ, end_stream=True)
        s.receive_data(c.data_to_send())
        s.send_headers(sid, RESP)
        s.outbound_flow_control_window = 1 << 30  # (the proxy's WINDOW_UPDATEs are not read)
        s.send_data(sid, BODY)
        s.send_headers(sid, TRAILERS, end_stream=True)
        out.append(s.data_to_send())
        c.streams.pop(sid, None)
        s.streams.pop(sid, None)
    return preface, out


def run_server(cls: Any, preface: bytes, requests: list[bytes]) -> float:
    codec = cls(client_side=False, limits=LIMITS)
    codec.data_to_send()
    codec.feed(preface)
    codec.data_to_send()
    head = ResponseHead(200, RESP[1:])
    t0 = time.process_time()
    for wire in requests:
        for ev in codec.feed(wire):
            if isinstance(ev, DataReceived):
                codec.ack(ev.stream_id, ev.flow_length)
            elif isinstance(ev, EndReceived):
                sid = ev.stream_id
                codec.send_response(sid, head, False)
                codec.send_data(sid, BODY)
                codec.send_end(sid, TRAILERS)
        codec.data_to_send()
    return time.process_time() - t0


def run_client(cls: Any, preface: bytes, responses: list[bytes]) -> float:
    codec = cls(client_side=True, limits=LIMITS)
    codec.data_to_send()
    codec.feed(preface)
    codec.data_to_send()
    head = RequestHead(b"POST", b"/helloworld.Greeter/SayHello", b"greeter.test:50051", b"http",
                       [(n, v) for n, v in REQ if n[:1] != b":"])
    t0 = time.process_time()
    for i, wire in enumerate(responses):
        sid = codec.send_request(head, b"http", False)
        codec.send_data(sid, BODY)
        codec.send_end(sid)
        codec.data_to_send()
        for ev in codec.feed(wire):
            if isinstance(ev, DataReceived):
                codec.ack(ev.stream_id, ev.flow_length)
        codec.data_to_send()
        assert sid == 2 * i + 1
    return time.process_time() - t0


def run_ngh2_server(ngh2: Any, preface: bytes, requests: list[bytes]) -> float:
    """`run_server`'s loop on ngh2's own API (its events, no translation into ours)."""
    c = ngh2.Connection(ngh2.Role.SERVER, ngh2.Configuration(auto_window_update=False))
    c.initiate_connection()
    c.data_to_send()
    c.receive_data(preface)
    c.events()
    c.data_to_send()
    data_received = ngh2.DataReceived
    t0 = time.process_time()
    out = b""
    for wire in requests:
        c.receive_data(wire)
        for ev in c.events():
            if isinstance(ev, data_received):
                c.acknowledge_received_data(len(ev.data), ev.stream_id)
                if ev.end_stream:
                    sid = ev.stream_id
                    c.send_response(sid, RESP)
                    c.send_data(sid, BODY)
                    c.send_trailers(sid, TRAILERS)
        out = c.data_to_send()
    elapsed = time.process_time() - t0
    assert TRAILERS[0][1] in out or len(out) > 20, "ngh2 sent no response"
    return elapsed


def check(preface: bytes, requests: list[bytes]) -> None:
    """Both engines see the same requests, bodies and ends."""
    seen = []
    for cls in (H2Codec, NgCodec):
        codec = cls(client_side=False, limits=LIMITS)
        codec.feed(preface)
        got = []
        for wire in requests[:50]:
            for ev in codec.feed(wire):
                if isinstance(ev, RequestReceived):
                    got.append((ev.head.method, ev.head.path, sorted(ev.head.headers)))
                elif isinstance(ev, DataReceived):
                    got.append(ev.data)
        seen.append(got)
    assert seen[0] == seen[1] and len(seen[0]) == 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="exchanges per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ngh2", metavar="DIR", help="also ngh2's server side, imported from DIR")
    args = ap.parse_args()
    n = args.n
    rpre, reqs = record_requests(n)
    spre, resps = record_responses(n)
    check(rpre, reqs)
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, cls in (("h2", H2Codec), ("nghttp2", NgCodec), ("h2", H2Codec),
                          ("nghttp2", NgCodec)):  # ABAB
            us = (run_server(cls, rpre, reqs) + run_client(cls, spre, resps)) * 1e6 / n
            results.setdefault(name, []).append(us)
    print(f"codec CPU per gRPC unary exchange, server + client side, n={n}, "
          f"{args.rounds} rounds ABAB (median, min-max):")
    med = {}
    for name, xs in results.items():
        med[name] = statistics.median(xs)
        print(f"  {name:8s} {med[name]:7.1f} us  ({min(xs):.1f}-{max(xs):.1f})")
    print(f"  h2 / nghttp2: {med['h2'] / med['nghttp2']:.1f}x")
    if args.ngh2:
        import importlib
        import sys
        sys.path.insert(0, args.ngh2)
        ngh2 = importlib.import_module("ngh2")
        server: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, run in (("ngh2 (its events)", lambda: run_ngh2_server(ngh2, rpre, reqs)),
                              ("nghttp2 (ours)", lambda: run_server(NgCodec, rpre, reqs)),
                              ("h2", lambda: run_server(H2Codec, rpre, reqs))):
                server.setdefault(name, []).append(run() * 1e6 / n)
        print("server side alone (median, min-max):")
        for name, xs in server.items():
            print(f"  {name:18s} {statistics.median(xs):7.1f} us  ({min(xs):.1f}-{max(xs):.1f})")


if __name__ == "__main__":
    main()
