"""What live tap costs a proxy per request (ADR 0056): nothing running, a tap that does not
match, a tap that records, a tap over its rate; and one `TapEvents` batch's encoding.

    .venv/bin/python -m bench.micro_tap [--requests 100000] [--rounds 5]

No sockets.  `see()` runs on a scripted request stream (the shape `RequestStream.record`
hands it); the idle case times the one check the request path makes with no tap
(`ctx.tap.taps`).  Each figure is the median of `--rounds` rounds with the spread (min-max),
in nanoseconds per request.  Results are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.telemetry.tap import TapHub
from tulle.proxyconfig.model import Cluster, Listener, Metadata, Node, ProxyConfig
from tulle.proxyconfig.stream import TapEvents, TapStart, encode
from tulle.proxyconfig.tap import MAX_RECORDS_PER_BATCH, TapMatch


def _hub(clock: Any = time.monotonic) -> TapHub:
    h = TapHub(clock=clock)
    h.configure(ProxyConfig(
        version="1", node=Node(name="web-0", namespace="shop", service="web"),
        listeners=[Listener(name="out", port=1, direction="outbound")],
        clusters=[Cluster(name="api", metadata=Metadata(service="api"))]))
    return h


def _request() -> Any:
    facts = ConnectionFacts("out", "outbound", ("10.0.0.9", 4242))
    head = RequestHead(b"GET", b"/api/v1/items?page=2", b"api", b"http",
                       [(b"user-agent", b"bench"), (b"accept", b"*/*")], version=b"1.1")
    return SimpleNamespace(conn=SimpleNamespace(facts=facts), head=head, status=200,
                           flags="", cluster="api", bytes_in=0, bytes_out=120,
                           start=time.monotonic(), upstream_host="10.0.0.5:80")  # (the hub's
    # clock, as a request's `start` is read from it: `stream.request_clock`)


def _per_request(h: TapHub, n: int, rounds: int) -> dict[str, float]:
    s = _request()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for i in range(n):
            h.see(s)
            if i % MAX_RECORDS_PER_BATCH == 0:
                h.flush()  # as the agent's flush loop does
        out.append((time.perf_counter_ns() - t0) / n)
        h.flush()
    return {"median_ns": round(statistics.median(out), 1), "min_ns": round(min(out), 1),
            "max_ns": round(max(out), 1)}


def _idle(n: int, rounds: int) -> dict[str, float]:
    ctx = SimpleNamespace(tap=TapHub())
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            tap = ctx.tap
            if tap.taps:
                tap.see(None)  # type: ignore[arg-type]
        loop_only = time.perf_counter_ns()
        for _ in range(n):
            pass
        t1 = time.perf_counter_ns()
        out.append(((loop_only - t0) - (t1 - loop_only)) / n)
    return {"median_ns": round(statistics.median(out), 1), "min_ns": round(min(out), 1),
            "max_ns": round(max(out), 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    n, r = a.requests, a.rounds
    results: dict[str, Any] = {"idle_check": _idle(n, r)}
    h = _hub()
    h.start(TapStart(id="miss", match=TapMatch(path_prefix="/other"), rate=100,
                     expires_ms=120_000))
    results["tap_not_matching"] = _per_request(h, n, r)
    h = _hub()
    h.start(TapStart(id="rec", rate=1e9, expires_ms=120_000))  # clamped to 100/s
    results["tap_matching_over_rate"] = _per_request(h, n, r)
    # Every request recorded: each call gets a fresh token (the bucket refills at 100/s).
    h = _hub()
    h.start(TapStart(id="all", rate=100, expires_ms=120_000))
    tap = h.taps[0]
    s = _request()
    out = []
    for _ in range(r):
        t0 = time.perf_counter_ns()
        for _ in range(n // 10):
            tap.tokens = 100.0
            h.see(s)
            tap.pending.clear()
        out.append((time.perf_counter_ns() - t0) / (n // 10))
    results["tap_recording"] = {"median_ns": round(statistics.median(out), 1),
                                "min_ns": round(min(out), 1), "max_ns": round(max(out), 1)}
    h.see(s)
    batch = TapEvents(id="all", records=tap.pending * MAX_RECORDS_PER_BATCH)
    t0 = time.perf_counter_ns()
    frame = encode(batch)
    results["batch_of_100_encode_us"] = round((time.perf_counter_ns() - t0) / 1000, 1)
    results["batch_of_100_bytes"] = len(frame)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
