"""What issue 12's telemetry costs the HTTP/1.1 proxy per request, no sockets (ADR 0062).

    .venv/bin/python -m bench.micro_telemetry [-n 3000] [--repeat 15] [--rounds 3]
                                              [--only all,golden,access,tracing] [--profile MODE]

`bench.micro_http1`'s in-memory `get` exchange (the same bytes through the same objects a
snapshot builds) with the listener's telemetry off and on, alternating (off, on, off, on...)
for `--rounds` rounds so a busy machine moves both sides alike; each round's figure is the
best of `--repeat` runs of `-n` requests, CPU µs per request, next to function calls per
request (cProfile; compiled code's own calls are not counted, what it calls in Python is).

"On" is what the budget prices: the `telemetry` section the real compiler makes of
`bench.telemetry_peers.OBSERVABILITY` (golden metrics, a JSON access log of every request to
/dev/null, tracing at 1% with no collector), or one of its three parts alone (`golden`,
`access`, `tracing`).  The access log's writer thread is not started: its batch is rendered
and written in this thread whenever the sink would wake it (every `sinks.BATCH` records), so
its CPU is in the figure and no thread switch blurs it (with the C line batch of ADR 0080,
whenever the batch reaches its bytes).  `--profile MODE` prints cProfile's
top functions by own time for one mode instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from bench import micro_http1
from bench.telemetry_peers import telemetry_section
from tulle.dataplane.telemetry.access_log import AccessLogger
from tulle.dataplane.telemetry.golden import build_golden
from tulle.dataplane.telemetry.logs_runtime import resource_of
from tulle.dataplane.telemetry.sinks import LineSink
from tulle.dataplane.telemetry.tracing.runtime import TracingRuntime
from tulle.proxyconfig.model import ProxyConfig

MODES = ("all", "golden", "access", "tracing")
PARTS = {"all": ("metrics", "access_log", "tracing"), "golden": ("metrics",),
         "access": ("access_log",), "tracing": ("tracing",)}


class SyncWake(threading.Event):
    """The sink's wake-up, writing the batch in the caller's thread instead."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink
        self.lines = 0

    def set(self) -> None:
        sink = self.sink
        before = sink.stats.written
        sink._flush()
        self.lines += sink.stats.written - before


def _with_telemetry(mode: str | None) -> tuple[Callable[..., Any], list[SyncWake]]:
    """`micro_http1.build` whose listener context has `mode`'s telemetry (None: off)."""
    wakes: list[SyncWake] = []
    original = micro_http1.build
    section = telemetry_section()

    def build(filters: bool = False, routes: bool = False) -> Any:
        handle, pool = original(filters, routes)
        if mode is None:
            return handle, pool
        ctx = handle.ctx
        wanted = PARTS[mode]
        tel = {k: (v if k in wanted or k == "principal" else None) for k, v in section.items()}
        cfg = msgspec.convert({"node": {"name": "bench-0", "namespace": "bench"},
                               "telemetry": tel,
                               "listeners": [msgspec.to_builtins(ctx.cfg)]}, ProxyConfig)
        t = cfg.telemetry
        if t.metrics is not None:
            ctx.golden = build_golden(ctx.metrics, cfg, None)
        if t.tracing is not None:
            tracer = TracingRuntime(ctx.metrics).prepare(cfg)
            ctx.tracing = tracer
            ctx.tracer = tracer.for_listener(ctx.cfg.name, ctx.cfg.direction) if tracer else None
        if t.access_log is not None:
            alog = AccessLogger(t.access_log, resource_of(cfg.node), t.principal)
            sink = alog.sink
            assert isinstance(sink, LineSink)
            sink._wake = wake = SyncWake(sink)
            wakes.append(wake)
            ctx.access_log = alog
        return handle, pool

    return build, wakes


def measure(mode: str | None, n: int, repeat: int, runner: Callable[[Any], Any],
            profile: cProfile.Profile | None = None) -> tuple[float, int]:
    build, wakes = _with_telemetry(mode)
    saved = micro_http1.build
    micro_http1.build = build  # type: ignore[assignment]
    try:
        us = runner(micro_http1.run(micro_http1.SCENARIOS[0], n, repeat, profile))
    finally:
        micro_http1.build = saved  # type: ignore[assignment]
    return float(us), sum(w.lines for w in wakes)


def calls(mode: str | None, runner: Callable[[Any], Any]) -> float:
    n = 2048
    prof = cProfile.Profile()
    measure(mode, n, 1, runner, prof)
    total = sum(nc for (_, nc, _, _, _) in pstats.Stats(prof).stats.values())  # type: ignore[attr-defined]
    return float(total) / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(MODES))
    ap.add_argument("--profile", metavar="MODE", default="")
    args = ap.parse_args(argv)
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    from tulle import native

    if args.profile:
        prof = cProfile.Profile()
        measure(None if args.profile == "off" else args.profile, args.n, 1, runner, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(
            int(os.environ.get("PROFILE_ROWS", "30")))
        return
    modes = [m for m in args.only.split(",") if m]
    mode, why = native.mode()
    print(f"CPU µs per request (get): median of {args.rounds} rounds (min..max), each the best "
          f"of {args.repeat} x {args.n}; off and on alternate (Python {sys.version.split()[0]}; "
          f"hot path {mode}: {why})")
    rows: dict[str, list[float]] = {"off": [], **{m: [] for m in modes}}
    lines: dict[str, int] = {}
    for _ in range(args.rounds):
        for m in modes:  # off, m1, off, m2, ...: ABAB
            rows["off"].append(measure(None, args.n, args.repeat, runner)[0])
            us, written = measure(m, args.n, args.repeat, runner)
            rows[m].append(us)
            lines[m] = written
    off = statistics.median(rows["off"])
    for name, values in rows.items():
        med = statistics.median(values)
        extra = "" if name == "off" else (f"  {med - off:+5.2f} µs  x{med / off:.3f}"
                                          f"  ({lines[name]} log lines written)")
        print(f"  {name:<8} {med:6.2f} µs ({min(values):.2f}..{max(values):.2f}) "
              f"{calls(None if name == 'off' else name, runner):6.1f} calls{extra}")


if __name__ == "__main__":
    main()
