"""What tracing costs the HTTP/1.1 proxy per request, without sockets (ADR 0055).

    .venv/bin/python -m bench.micro_tracing [-n 3000] [--repeat 15] [--rounds 5]
                                            [--percent 1,100] [--only get,get-curl]

Runs `bench.micro_http1`'s in-memory exchange (same bytes, same objects as a snapshot builds
them) with the listener's tracer off and on at each sampling percentage, alternating
(off, on, off, on, ...) for `--rounds` rounds so a busy machine moves both sides alike; each
round's figure is the best of `--repeat` runs of `-n` requests, CPU µs per request.  Prints
the median over the rounds with the spread (min..max) and the difference to "off".

With tracing on every request pays for reading and writing the trace context; a sampled one
also for its span: the span goes to a real `TraceExporter` whose queue is encoded into an
`ExportTraceServiceRequest` every 64 requests (what the export task does, less the POST), so
the encoder's CPU is in the figure too.

On a busy machine, count instructions instead (load does not move them): run
`valgrind --tool=callgrind python -m bench.micro_tracing --once MODE -n N` for N = 4000 and
12000 (each adds a quarter of N as warm-up) and divide the difference of the totals by 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable
from typing import Any

from bench import micro_http1
from tulle.dataplane.telemetry.otlp.traces import TraceExporter
from tulle.dataplane.telemetry.tracing.span import Span
from tulle.dataplane.telemetry.tracing.tracer import Tracer
from tulle.proxyconfig.tracing import Tracing


class EncodingSink:
    """A real exporter's queue, drained by its own encoder every `every` spans offered."""

    def __init__(self, every: int = 64) -> None:
        self.exporter = TraceExporter("http://127.0.0.1:4318", {"service.name": "bench"},
                                      max_queue=1 << 20)
        self.every = every
        self.encoded = 0
        self.spans = 0

    def add(self, span: Span) -> None:
        exp = self.exporter.exporter
        exp.offer(span)
        self.spans += 1
        if exp.pending >= self.every:
            batch = list(exp._queue)  # (what `_send_batch` takes off the queue)
            exp._queue.clear()
            self.encoded += len(exp.encode(batch))


def _with_tracing(percent: float | None) -> tuple[Callable[..., Any], list[EncodingSink]]:
    """`micro_http1.build` whose listener context traces at `percent` (None: off)."""
    sinks: list[EncodingSink] = []
    original = micro_http1.build

    def build(filters: bool = False, routes: bool = False) -> Any:
        handle, pool = original(filters, routes)
        if percent is not None:
            sink = EncodingSink()
            sinks.append(sink)
            tracer = Tracer(Tracing(sampling_percent=percent), sink)
            handle.ctx.tracing = tracer
            handle.ctx.tracer = tracer.for_listener("bench", "outbound")
        return handle, pool

    return build, sinks


def measure(sc: micro_http1.Scenario, n: int, repeat: int, percent: float | None,
            runner: Callable[[Any], Any]) -> tuple[float, list[EncodingSink]]:
    build, sinks = _with_tracing(percent)
    saved = micro_http1.build
    micro_http1.build = build  # type: ignore[assignment]
    try:
        us = runner(micro_http1.run(sc, n, repeat, None))
    finally:
        micro_http1.build = saved  # type: ignore[assignment]
    return float(us), sinks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--percent", default="1,100", help="sampling percentages to measure")
    ap.add_argument("--only", default="get,get-curl")
    ap.add_argument("--once", metavar="MODE", default="",
                    help="`off` or a percentage: run the `get` exchange once for -n requests "
                         "(plus warm-up), untimed, for an instruction counter (valgrind)")
    args = ap.parse_args(argv)
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    if args.once:
        build, _ = _with_tracing(None if args.once == "off" else float(args.once))
        micro_http1.build = build  # type: ignore[assignment]
        runner(micro_http1.run(micro_http1.SCENARIOS[0], args.n, 1, None))
        return
    percents = [float(p) for p in args.percent.split(",")]
    wanted = set(args.only.split(","))
    print(f"CPU µs per request: median of {args.rounds} rounds (min..max), each the best of "
          f"{args.repeat} x {args.n}; off and on alternate (Python {sys.version.split()[0]})")
    for sc in micro_http1.SCENARIOS:
        if sc.name not in wanted:
            continue
        rows: dict[str, list[float]] = {"off": []}
        rows.update({f"{p:g}%": [] for p in percents})
        sampled: dict[str, tuple[int, int]] = {}
        for _ in range(args.rounds):
            for p in percents:  # off, p1, off, p2, ...: ABAB
                rows["off"].append(measure(sc, args.n, args.repeat, None, runner)[0])
                us, sinks = measure(sc, args.n, args.repeat, p, runner)
                rows[f"{p:g}%"].append(us)
                sampled[f"{p:g}%"] = (sum(s.spans for s in sinks), sum(s.encoded for s in sinks))
        off = statistics.median(rows["off"])
        for name, values in rows.items():
            med = statistics.median(values)
            extra = "" if name == "off" else (
                f"  {med - off:+5.2f} µs ({(med / off - 1) * 100:+5.1f}%)"
                f"  spans {sampled[name][0]}, {sampled[name][1]} bytes encoded")
            print(f"  {sc.name:<9} tracing {name:<5} {med:6.2f} µs  "
                  f"({min(values):.2f}..{max(values):.2f}){extra}")


if __name__ == "__main__":
    main()
