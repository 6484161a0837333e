"""What the golden metrics (`telemetry/golden.py`, ADR 0053) cost per request, no sockets.

    .venv/bin/python -m bench.micro_golden [-n 3000] [--repeat 15] [--rounds 3]

Two measures, printed as JSON:

* `observer_us`: `HttpGolden.count` alone on a finished inbound request record (the per-request
  work the golden metrics add: one key, one lookup, a counter and three histograms), best of
  `--repeat` x `n` calls;
* `proxy_us_off` / `proxy_us_on`: `bench.micro_http1`'s `get` scenario (a whole HTTP/1.1
  request and response through the proxy's objects) with the listener's golden metrics off and
  on, alternated off/on `--rounds` times (ABAB, so a busy neighbour disturbs both alike);
  medians and spreads of the rounds' best-of-`--repeat` CPU µs per request, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

import msgspec

from bench import micro_http1
from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.stream import RequestStream
from tulle.dataplane.telemetry.golden import build_golden
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.model import ProxyConfig

TELEMETRY = {"metrics": {"workload": "web-v1", "app": "web", "version": "v1",
                         "principal": "spiffe://mesh.local/ns/shop/sa/web"}}


def observer_us(n: int, repeat: int) -> float:
    cfg = msgspec.convert({
        "node": {"name": "api-0", "namespace": "shop", "service": "api"},
        "telemetry": TELEMETRY,
        "listeners": [{"name": "in", "port": 1, "direction": "inbound", "cluster": "app"}],
        "clusters": [{"name": "app"}]}, ProxyConfig)
    g = build_golden(ProxyMetrics(), cfg, None)
    assert g is not None
    rec = g.http(cfg.listeners[0], cfg.clusters[0])
    conn: Any = SimpleNamespace(
        facts=SimpleNamespace(peer_identity="spiffe://mesh.local/ns/a/sa/b"))
    stream = RequestStream(conn, RequestHead(b"GET", b"/", b"web", b"http", []), True, 0.0)
    stream.status, stream.bytes_out = 200, 1024
    count = rec.count
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(n):
            count(stream, 1.5)
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def _with_golden(on: bool) -> None:
    """Make `micro_http1.build` give its listener context golden metrics (or not)."""
    original = _ORIGINAL_BUILD

    def build(filters: bool = False, routes: bool = False) -> Any:
        handle, pool = original(filters, routes)
        if on:
            ctx = handle.ctx
            cfg = msgspec.convert({"telemetry": TELEMETRY,
                                   "listeners": [msgspec.to_builtins(ctx.cfg)]}, ProxyConfig)
            ctx.golden = build_golden(ctx.metrics, cfg, None)
        return handle, pool

    micro_http1.build = build  # type: ignore[assignment]


_ORIGINAL_BUILD = micro_http1.build


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    import uvloop

    sc = next(s for s in micro_http1.SCENARIOS if s.name == "get")
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        for flag, out in ((False, off), (True, on)):
            _with_golden(flag)
            out.append(uvloop.run(micro_http1.run(sc, args.n, args.repeat, None)))
    obs = [observer_us(args.n * 10, args.repeat) for _ in range(args.rounds)]
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(json.dumps({
        "observer_us": round(statistics.median(obs), 3),
        "observer_us_spread": [round(min(obs), 3), round(max(obs), 3)],
        "proxy_us_off": round(m_off, 2), "proxy_us_off_spread": [round(min(off), 2),
                                                                 round(max(off), 2)],
        "proxy_us_on": round(m_on, 2), "proxy_us_on_spread": [round(min(on), 2),
                                                              round(max(on), 2)],
        "on_vs_off": round(m_on / m_off, 3), "rounds": args.rounds,
    }, indent=2))


if __name__ == "__main__":
    main()
