"""HTTP/2 against HAProxy in ABAB rounds: gRPC unary (h2c both sides) and h2c to HTTP/1.1.

    .venv/bin/python -m bench.h2_rounds [--rounds 3] [--seconds 6] [--rss] [--json PATH]

Why a runner of its own: `make bench` measures h2c and gRPC once per peer, after the HTTP/1.1
rounds; issue 13's targets are ratios to HAProxy as medians of at least three rounds.  Here
each round starts Tulle and HAProxy afresh for each protocol and loads them one after the
other, alternating which goes first (ABAB), with the same generators and origins as
`bench.run` (`bench/peers.py`, `bench/measure.py`): h2load on CPU 1, the proxy on CPU 0.
`--rss` adds Tulle's RSS after 100,000 gRPC calls on one connection.  The engine is the
proxy's default unless `TULLE_H2_ENGINE` says otherwise (the Tulle process inherits it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import Plan, grpc_rss_after_calls, measure_extra, measure_grpc, rnd
from bench.peers import (
    LOAD_CPU,
    STARTERS,
    Running,
    check_grpc,
    check_h2c,
    start_grpc_origin,
    start_origin,
)
from bench.procs import ProcessSet

PEERS = ("tulle", "haproxy")


def _one(ps: ProcessSet, name: str, protocol: str, origin: int, plan: Plan) -> dict[str, Any]:
    r: Running = STARTERS[name](ps, origin, protocol)
    try:
        if protocol == "grpc":
            check_grpc(r, ps.tmp)
            return measure_grpc(r, plan, ps.tmp)
        check_h2c(r)
        return measure_extra(r, "h2c", plan)
    finally:
        if r.proc is not None:
            ps.stop(r.proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="closed-loop load per run")
    ap.add_argument("--rss", action="store_true", help="Tulle's RSS after 100,000 gRPC calls")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.sched_setaffinity(0, {LOAD_CPU})
    plan = Plan(fixed_rate=0, rounds=args.rounds, fixed_s=0, warmup_s=0, fixed_conns=0,
                wrk_s=0, wrk_conns=50, extra_s=args.seconds)
    res: dict[str, Any] = {"engine": os.environ.get("TULLE_H2_ENGINE", "nghttp2"),
                           "loadavg_before": os.getloadavg(), "rounds": {}}
    tmp = Path(tempfile.mkdtemp(prefix="tulle-h2-rounds-"))
    tmp.chmod(0o755)
    try:
        with ProcessSet(tmp) as ps:
            http = start_origin(ps)
            grpc = start_grpc_origin(ps)
            for protocol, origin in (("grpc", grpc.port), ("h2c", http.port)):
                runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PEERS}
                for i in range(args.rounds):
                    order = PEERS if i % 2 == 0 else PEERS[::-1]  # ABAB
                    for name in order:
                        d = _one(ps, name, protocol, origin, plan)
                        runs[name].append(d)
                        print(f"{protocol} round {i + 1} {name}: cpu_us_per_req_sat="
                              f"{d.get('cpu_us_per_req_sat')} rps={d.get('rps_max')} "
                              f"rss_mb={d.get('rss_mb')} problems={d.get('problems')}",
                              flush=True)
                res["rounds"][protocol] = {
                    n: [{k: d.get(k) for k in ("cpu_us_per_req_sat", "rps_max", "rss_mb",
                                               "p50_ms", "p99_ms", "problems")} for d in ds]
                    for n, ds in runs.items()}
                summary: dict[str, Any] = {}
                for name, ds in runs.items():
                    xs = [d["cpu_us_per_req_sat"] for d in ds]
                    summary[name] = {"cpu_us_per_req_sat": rnd(statistics.median(xs), 1),
                                     "spread": [min(xs), max(xs)],
                                     "rps_max": statistics.median(d["rps_max"] for d in ds),
                                     "rss_mb": max(d["rss_mb"] for d in ds)}
                ratios = [t["cpu_us_per_req_sat"] / h["cpu_us_per_req_sat"]
                          for t, h in zip(runs["tulle"], runs["haproxy"], strict=True)]
                summary["ratio_cpu_us_per_req_sat"] = rnd(statistics.median(ratios), 2)
                summary["ratio_spread"] = [rnd(min(ratios), 2), rnd(max(ratios), 2)]
                res[protocol] = summary
                print(f"{protocol}: {json.dumps(summary)}", flush=True)
            if args.rss:
                r = STARTERS["tulle"](ps, grpc.port, "grpc")
                try:
                    res["grpc"]["tulle"].update(grpc_rss_after_calls(r, ps.tmp))
                finally:
                    if r.proc is not None:
                        ps.stop(r.proc)
                print(f"grpc tulle rss: {res['grpc']['tulle']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
