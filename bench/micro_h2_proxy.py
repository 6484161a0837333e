"""The HTTP/2 proxy's Python cost per call, without sockets or a load generator.

    .venv/bin/python -m bench.micro_h2_proxy [-n 3000] [--repeat 15] [--only grpc,h2c]
                                             [--per-read 1] [--profile grpc]

Why: `bench.h2_rounds` measures the proxy against HAProxy with h2load, which needs a quiet
machine; `bench.micro_h2` measures the codec alone.  This runs the whole downstream driver,
request stream, router, cluster and pool (`listeners/http2.py`, `listeners/h2exchange.py`,
`upstream/http2.py` or `upstream/http1.py`) in one process on in-memory transports
(`listeners/memory.py`), built as a snapshot builds them, with the bytes real peers send:

* `grpc`: a gRPC unary call, h2c both sides: the client's HEADERS (a unique `x-request-id`),
  one DATA frame with END_STREAM; the origin's head, one DATA frame and `grpc-status` trailers;
* `h2c`: h2load's GET over h2c prior knowledge to an HTTP/1.1 origin answering nginx's 1 KiB.

Each downstream read carries `--per-read` calls (h2load's `-m10` delivers several at once under
saturation), each upstream read one response, and the event loop turns after every read, as
it does between socket reads (the writes gathered by `write_soon` are paid for).  Figures: CPU
µs per call, best of `--repeat` (process time), and function calls per call (cProfile), which
no neighbour on a shared machine can move; compiled code's own calls are not counted.  Each
scenario first checks what the client receives with a live h2 client (status, body, trailers).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from bench.micro_h2 import BODY, REQ, record_requests, record_responses
from bench.micro_http1 import BODY as BODY_1K
from bench.micro_http1 import NGINX_HEAD
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http2 import H2Downstream
from tulle.dataplane.listeners.memory import MemoryTransport, memory_handle
from tulle.dataplane.upstream.http1 import H1Connection, H1Pool
from tulle.dataplane.upstream.http2 import H2UpConnection
from tulle.dataplane.upstream.http2_pool import H2Pool
from tulle.proxyconfig import validate

H2C_REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:18080"),
           (b":path", b"/1k"), (b"user-agent", b"h2load nghttp2/1.52.0")]


def build(protocol: str) -> tuple[ListenerHandle, Any]:
    """One listener (http2), one route, one cluster (http2 for gRPC, http1 for h2c)."""
    rule: dict[str, Any] = {"backends": [{"cluster": "origin"}]}
    if protocol == "grpc":
        rule["timeout_ms"] = 0  # as bench.peers configures gRPC
    cfg = validate({
        "listeners": [{"name": "bench", "port": 18080, "protocol": "http2",
                       "route_table": "rt"}],
        "clusters": [{"name": "origin", "protocol": "http2" if protocol == "grpc" else "http1",
                      "max_idle_per_endpoint": 1024,
                      "endpoints": [{"address": "127.0.0.1", "port": 18081}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": [rule]}]}],
    })
    handle = memory_handle(cfg, "bench")
    cluster = handle.ctx.clusters["origin"]
    return handle, cluster.pool_for(cluster.endpoints[0])


def h2c_requests(n: int) -> tuple[bytes, list[bytes]]:
    """h2load's preface and `n` GETs (HEADERS with END_STREAM)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                            header_encoding=None))
    c.initiate_connection()
    c.increment_flow_control_window(1 << 30)
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
    c.local_settings.acknowledge()
    c.remote_settings.update({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1 << 30})
    c.remote_settings.acknowledge()
    preface = c.data_to_send()
    out = []
    for _ in range(n):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, H2C_REQ, end_stream=True)
        out.append(c.data_to_send())
        c.streams.pop(sid, None)
    return preface, out


class Rig:
    """A downstream connection and its upstream connection(s), fed recorded bytes: one HTTP/2
    upstream connection, or `per_read` HTTP/1.1 ones (one request each at a time)."""

    def __init__(self, protocol: str, per_read: int = 1) -> None:
        self.protocol = protocol
        handle, pool = build(protocol)
        self.down_t = MemoryTransport(keep=1 << 16)
        self.down = H2Downstream(handle)
        self.down.connection_made(self.down_t)  # type: ignore[arg-type]
        self.ups: list[tuple[Any, MemoryTransport]] = []
        if protocol == "grpc":
            assert isinstance(pool, H2Pool)
            up_t = MemoryTransport(keep=1 << 16)
            up2 = H2UpConnection(pool)
            up2.connection_made(up_t)  # type: ignore[arg-type]
            pool.conns.append(up2)
            pool.all.add(up2)
            pool.limits.connections += 1
            self.ups.append((up2, up_t))
        else:
            assert isinstance(pool, H1Pool)
            for _ in range(per_read):
                up_t = MemoryTransport(keep=1 << 16)
                up1 = H1Connection(pool)
                up1.connection_made(up_t)  # type: ignore[arg-type]
                pool.idle.append(up1)
                self.ups.append((up1, up_t))
        self.up, self.up_t = self.ups[0]


async def check(protocol: str) -> None:
    """A live h2 client through the rig: status 200, the body, gRPC's trailers."""
    rig = Rig(protocol)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                            header_encoding=None))
    c.initiate_connection()
    spre, resps = record_responses(3)
    if protocol == "grpc":
        rig.up.data_received(spre)
    got: dict[int, list[Any]] = {}
    for i in range(3):
        sid = c.get_next_available_stream_id()
        if protocol == "grpc":
            c.send_headers(sid, [*REQ, (b"x-request-id", b"r%d" % i)])
            c.send_data(sid, BODY, end_stream=True)
        else:
            c.send_headers(sid, H2C_REQ, end_stream=True)
        rig.down.data_received(c.data_to_send())
        await asyncio.sleep(0)
        sent = rig.up_t.take()
        assert sent if protocol == "grpc" else sent.startswith(b"GET /1k HTTP/1.1\r\n"), sent
        rig.up.data_received(resps[i] if protocol == "grpc" else NGINX_HEAD + BODY_1K)
        await asyncio.sleep(0)
        for ev in c.receive_data(rig.down_t.take()):
            if isinstance(ev, h2.events.ResponseReceived):
                got.setdefault(ev.stream_id, []).append(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                got.setdefault(ev.stream_id, []).append(ev.data)
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                got.setdefault(ev.stream_id, []).append(dict(ev.headers)[b"grpc-status"])
            elif isinstance(ev, h2.events.StreamEnded):
                got.setdefault(ev.stream_id, []).append("end")
    want = [b"200", BODY, b"0", "end"] if protocol == "grpc" else [b"200", BODY_1K, "end"]
    for sid in (1, 3, 5):
        assert b"".join(x for x in got[sid] if isinstance(x, bytes) and len(x) > 3) == \
            b"".join(x for x in want if isinstance(x, bytes) and len(x) > 3), got
        assert got[sid][0] == b"200" and got[sid][-1] == "end", got


async def calls(rig: Rig, reqs: list[bytes], resps: list[bytes], lo: int, hi: int,
                per_read: int) -> None:
    """Calls `lo` to `hi`: `per_read` requests per downstream read, one response per upstream
    read, a turn of the loop after each read."""
    feed_down: Callable[[bytes], None] = rig.down.data_received
    down_take = rig.down_t.take
    ups = rig.ups
    for i in range(lo, hi, per_read):
        feed_down(b"".join(reqs[i:min(i + per_read, hi)]))
        await asyncio.sleep(0)
        if len(ups) == 1:  # HTTP/2: the responses of all, in stream order, one per read
            up, up_t = ups[0]
            up_t.take()
            for j in range(i, min(i + per_read, hi)):
                up.data_received(resps[j])
                await asyncio.sleep(0)
        else:  # HTTP/1.1: each connection that was given a request answers it
            j = i
            for up, up_t in ups:
                if up_t.out:
                    up_t.take()
                    up.data_received(resps[j])
                    j += 1
                    await asyncio.sleep(0)
            assert j == min(i + per_read, hi), "a request did not reach an origin"
        down_take()


async def run(protocol: str, n: int, repeat: int, per_read: int,
              profile: cProfile.Profile | None) -> float:
    """Best CPU µs per call over `repeat` runs of `n` calls, each run on a fresh rig."""
    best = float("inf")
    warm = max(n // 4, 500)
    total = warm + n
    if protocol == "grpc":
        dpre, reqs = record_requests(total)
        upre, resps = record_responses(total)
    else:
        dpre, reqs = h2c_requests(total)
        upre, resps = b"", [NGINX_HEAD + BODY_1K] * total
    for _ in range(repeat):
        rig = Rig(protocol, per_read)
        rig.down.data_received(dpre)
        if upre:
            rig.up.data_received(upre)
        await asyncio.sleep(0)
        rig.down_t.take()
        await calls(rig, reqs, resps, 0, warm, per_read)
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        await calls(rig, reqs, resps, warm, total, per_read)
        best = min(best, time.process_time() - t0)
        if profile is not None:
            profile.disable()
        assert not rig.down.closing and not rig.down.exchanges, "calls left unfinished"
    return best / n * 1e6


def calls_per_call(protocol: str, runner: Callable[[Any], Any], per_read: int,
                   n: int = 2000) -> tuple[float, pstats.Stats]:
    prof = cProfile.Profile()
    runner(run(protocol, n, 1, per_read, prof))
    stats = pstats.Stats(prof)
    total = sum(nc for (_, nc, _, _, _) in stats.stats.values())  # type: ignore[attr-defined]
    return float(total) / n, stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="calls per repeat (default 3000)")
    ap.add_argument("--repeat", type=int, default=15, help="best of this many (default 15)")
    ap.add_argument("--only", default="grpc,h2c", help="comma-separated: grpc, h2c")
    ap.add_argument("--per-read", type=int, default=1, help="calls per downstream read")
    ap.add_argument("--profile", metavar="SCENARIO", default="",
                    help="cProfile one scenario and print the top functions by own time")
    args = ap.parse_args(argv)
    import uvloop

    runner: Callable[[Any], Any] = uvloop.run
    if args.profile:
        _, stats = calls_per_call(args.profile, runner, args.per_read, args.n)
        stats.sort_stats("tottime").print_stats(int(os.environ.get("PROFILE_ROWS", "30")))
        return
    from tulle import native
    from tulle.dataplane.protocols.h2engine import ENGINE

    mode, why = native.mode()
    print(f"CPU µs per call, best of {args.repeat} x {args.n}, {args.per_read} call(s) per "
          f"downstream read; function calls per call (Python {sys.version.split()[0]}; "
          f"HTTP/2 engine {ENGINE}; hot path {mode}: {why})")
    for protocol in args.only.split(","):
        runner(check(protocol))
        us = runner(run(protocol, args.n, args.repeat, args.per_read, None))
        calls, _ = calls_per_call(protocol, runner, args.per_read)
        print(f"  {protocol:<5} {us:7.1f} µs {calls:6.1f} calls")


if __name__ == "__main__":
    main()
