"""Issue 12's budget with real sockets: the same proxy with its telemetry on and off, ABAB.

    PYTHONPATH=src .venv/bin/python -m bench.telemetry_cost [--rounds 3] [--seconds 4]
                                                         [--what all] [--base DIR]

Starts one nginx origin and, from this tree, one proxy without `telemetry` and one with the
section `bench.telemetry_peers` prices (`--what all`: golden metrics, a JSON access log of
every request to /dev/null, tracing at 1%; or one part: `golden`, `access`, `tracing`), both
pinned to the proxy CPU as `bench.run` pins them; with `--base DIR` (a `git archive` of an
earlier commit, built with its `scripts/build_native.py`) the same two from that tree too: the
"before".  Each round drives every proxy in turn (the order rotates round by round, so a busy
neighbour disturbs all alike) with wrk, 1 thread x 50 connections for `--seconds`, at
saturation, and reads the proxy's CPU time (every thread, the log writer's included): CPU µs
per request.  Prints each round, then per tree the median on/off ratio with its spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import PROXY_CPU, Running, start_origin, tulle_cmd, tulle_config
from bench.procs import ProcessSet, cpu_seconds, free_port, tree, wait_port
from bench.telemetry_peers import telemetry_section
from bench.tools import run_wrk

PARTS = {"all": ("metrics", "access_log", "tracing"), "golden": ("metrics",),
         "access": ("access_log",), "tracing": ("tracing",)}


def section(what: str) -> dict[str, Any]:
    full = telemetry_section()
    return {k: (v if k in PARTS[what] or k == "principal" else None) for k, v in full.items()}


def start(ps: ProcessSet, origin: int, name: str, telemetry: dict[str, Any] | None,
          src: Path | None) -> Running:
    port, admin = free_port(), free_port()
    cfg = tulle_config(port, admin, origin, "http1")
    if telemetry is not None:
        cfg["telemetry"] = telemetry
        cfg["node"] = {"name": "bench-0", "namespace": "bench"}
    conf = ps.tmp / f"{name}.json"
    conf.write_text(json.dumps(cfg))
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": str(src)}
    proc = ps.start(name, [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                           "--watch-interval", "0", "--log-level", "warning"],
                    cpu=PROXY_CPU, env=env)
    wait_port(port, proc)
    return Running(name, port, proc, tree(proc.pid))


def drive(r: Running, seconds: int) -> float:
    before = cpu_seconds(r.pids)[0]
    res = run_wrk(r.port, duration=seconds, connections=50)
    used = cpu_seconds(r.pids)[0] - before
    return used * 1e6 / max(int(res["requests"]), 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--what", choices=sorted(PARTS), default="all")
    ap.add_argument("--base", type=Path, default=None,
                    help="an earlier tree (its src/ is put on PYTHONPATH): measured too")
    args = ap.parse_args(argv)
    telemetry = section(args.what)
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.base is not None:
        trees.append(("base", (args.base / "src").resolve()))
    with tempfile.TemporaryDirectory(prefix="tulle-bench-") as tmp:
        Path(tmp).chmod(0o755)  # nginx workers drop privileges and must read the origin's file
        ps = ProcessSet(Path(tmp))
        try:
            origin = start_origin(ps).port
            peers = [(t, mode, start(ps, origin, f"{t}-{mode}", telemetry if mode == "on" else None,
                                     src))
                     for t, src in trees for mode in ("off", "on")]
            for _, _, r in peers:  # warm up: caches, metric children, the log file
                run_wrk(r.port, duration=1, connections=50)
            figures: dict[tuple[str, str], list[float]] = {(t, m): [] for t, m, _ in peers}
            for i in range(args.rounds):
                order = peers[i % len(peers):] + peers[:i % len(peers)]
                for t, m, r in order:
                    figures[(t, m)].append(drive(r, args.seconds))
                print(f"round {i + 1}: " + ", ".join(
                    f"{t}-{m} {figures[(t, m)][-1]:.1f}" for t, m, _ in peers) + " µs/req")
            for t, _ in trees:
                ratios = [on / off for on, off in zip(figures[(t, "on")], figures[(t, "off")],
                                                      strict=True)]
                print(f"{t}: telemetry {args.what} on/off median {statistics.median(ratios):.3f} "
                      f"({min(ratios):.3f}..{max(ratios):.3f}); off "
                      f"{statistics.median(figures[(t, 'off')]):.1f} µs/req, on "
                      f"{statistics.median(figures[(t, 'on')]):.1f} µs/req")
        finally:
            ps.stop_all()


if __name__ == "__main__":
    main()
