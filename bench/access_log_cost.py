"""What the access log costs per request: the same proxy with it off and on, ABAB.

    PYTHONPATH=src .venv/bin/python -m bench.access_log_cost --rounds 3 --seconds 4

Each round starts one proxy without `telemetry` and one with `telemetry.access_log` (JSON
lines to a file, every request logged: the worst case; `--sample` to sample), drives each
with `wrk` for `--seconds` at saturation in turn (A, B, A, B, ...), and reads the proxy's CPU
seconds (scheduler run time of every thread, the log writer's included) over the run:
CPU microseconds per request.  Prints each round and the median with its spread.  The origin
is nginx (`bench/peers.py`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import BODY_PATH, start_origin, tulle_cmd, tulle_config
from bench.procs import ProcessSet, cpu_seconds, free_port, tree, wait_port


def _start(ps: ProcessSet, origin: int, name: str, telemetry: dict[str, Any] | None) -> tuple[int, list[int]]:
    port, admin = free_port(), free_port()
    cfg = tulle_config(port, admin, origin, "http1")
    if telemetry is not None:
        cfg["telemetry"] = telemetry
    conf = ps.tmp / f"{name}.json"
    conf.write_text(json.dumps(cfg))
    proc = ps.start(name, [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                           "--watch-interval", "0", "--log-level", "warning"])
    wait_port(port, proc)
    return port, tree(proc.pid)


def _drive(port: int, pids: list[int], seconds: int) -> float:
    before = cpu_seconds(pids)[0]
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}{BODY_PATH}"],
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pids)[0] - before
    m = re.search(r"(\d+) requests in", out)
    assert m is not None, out
    return used * 1e6 / int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--sample", type=float, default=100.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tulle-bench-") as tmp:
        Path(tmp).chmod(0o755)  # nginx workers drop privileges and must read the origin's file
        ps = ProcessSet(Path(tmp))
        try:
            origin = start_origin(ps).port
            log = Path(tmp) / "access.log"
            off = _start(ps, origin, "off", None)
            on = _start(ps, origin, "on", {"access_log": {
                "sink": {"kind": "file", "path": str(log)}, "sample_percent": args.sample}})
            rows = []
            for i in range(args.rounds):
                a = _drive(*off, args.seconds)
                b = _drive(*on, args.seconds)
                rows.append((a, b, b / a))
                print(f"round {i + 1}: off {a:.1f} us/req, on {b:.1f} us/req, ratio {b / a:.3f}")
            ratios = [r[2] for r in rows]
            print(f"median ratio {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f}); "
                  f"{sum(1 for _ in log.open())} lines logged")
        finally:
            ps.stop_all()


if __name__ == "__main__":
    main()
