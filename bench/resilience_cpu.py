"""Issue 10's benchmark rows, repeated and summarised: CPU per request of Tulle with
peak-EWMA, retries and a circuit breaker vs HAProxy with the equivalent settings (target ≤ 2x),
and of retries with their budget on a healthy path vs none (target < +3%).

    .venv/bin/python -m bench.resilience_cpu --runs 3 --json bench/results/resilience.json

Each run is one `bench.run --mode quick` over `tulle`, `haproxy`, `tulle-retry`,
`tulle-resilience` and `haproxy-resilience` (`bench/resilience_peers.py`), so every ratio
compares peers measured minutes apart on the same machine.  On a shared machine one run moves
±15%: the summary keeps every run's figures, their median, min and max, and the load average
before each run.  `--from a.json b.json ...` summarises runs made already.  Written under the
key `resilience_cpu` (merged into the JSON file the resilience scenarios share).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.one_down import merge_into

PEERS = ("tulle", "haproxy", "tulle-retry", "tulle-resilience", "haproxy-resilience")
KEYS = ("cpu_us_per_req", "cpu_us_per_req_sat", "rps_max", "p99_ms")
RATIOS = {"resilience_vs_haproxy": ("tulle-resilience", "haproxy-resilience"),
          "retry_vs_tulle": ("tulle-retry", "tulle"),
          "tulle_vs_haproxy": ("tulle", "haproxy"),
          "resilience_vs_tulle": ("tulle-resilience", "tulle")}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs),
                           "loadavg_before": [r.get("loadavg_before") for r in runs],
                           "peers": {}, "ratios": {}}
    for peer in PEERS:
        figures = {k: [r[peer][k] for r in runs if k in r.get(peer, {})] for k in KEYS}
        out["peers"][peer] = {k: {"runs": v, **_spread(v)} for k, v in figures.items() if v}
    for name, (a, b) in RATIOS.items():
        for key in ("cpu_us_per_req", "cpu_us_per_req_sat"):
            per_run = [r[a][key] / r[b][key] for r in runs
                       if key in r.get(a, {}) and r.get(b, {}).get(key)]
            if per_run:
                out["ratios"][f"{name}_{key}"] = {"runs": [round(x, 3) for x in per_run],
                                                  **_spread(per_run)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--from", dest="sources", nargs="*", type=Path, default=[],
                    help="summarise these bench.run JSON files instead of running")
    ap.add_argument("--json", type=Path, help="merge the summary into this file")
    args = ap.parse_args(argv)
    sources = list(args.sources)
    if not sources:
        tmp = Path(tempfile.mkdtemp(prefix="tulle-resilience-cpu-"))
        for i in range(args.runs):
            out = tmp / f"run{i}.json"
            subprocess.run([sys.executable, "-m", "bench.run", "--mode", "quick", "--peers",
                            ",".join(PEERS), "--json", str(out)], check=True)
            sources.append(out)
    summary = summarise([json.loads(p.read_text()) for p in sources])
    print(json.dumps(summary["ratios"], indent=2))
    if args.json:
        merge_into(args.json, {"resilience_cpu": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
