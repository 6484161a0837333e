"""The full-path benchmark (issue 11): added p50/p99 at 1,000 req/s for client pod -> sidecar ->
mTLS -> sidecar -> server pod, and the same through two node agents, against the same path with
no mesh and the same path through two HAProxy sidecars, in the same run, in network namespaces
(`bench/netns_mesh.py` builds the network).

    python -m bench.netns --rounds 3 --json bench/results/netns.json

Each round loads the three paths one after the other, the order rotating from round to round
(none, sidecar, agent, haproxy; sidecar, agent, haproxy, none; ...), so a burst of someone else's work on a
shared machine lands on every path alike.  The load is `bench/loadgen.py` (fixed rate, no
coordinated omission) run *inside the client pod* with `ip netns exec`, pinned to CPU 1 with
the origins; the proxies are on CPU 0.  A round's added latency is the meshed path's
percentile minus the unmeshed one's *in that round*; the JSON keeps every round and gives the
median and the spread (min, max) over rounds.  Tulle's paths are also read against
HAProxy's in the same round: `vs_haproxy` gives the median (and spread) of the per-round
differences of added p99 and ratios of CPU per request.  CPU per request is both proxies' CPU
(scheduler nanoseconds, `/proc/PID/task/*/schedstat`) over the phase, divided by the requests
completed; `others_on_proxy_cpu` is the share of CPU 0 used by anything else meanwhile,
`load_cpu_busy` how busy CPU 1 was (load generator, origins, control plane and whatever else
runs on the machine): high values mean the tail belongs to the machine, not to the mesh.

Needs root (namespaces, iptables in them), nginx, haproxy, curl, ss, setpriv; without them it writes
`skipped` with the reason and exits 0, like the main benchmark's peers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.netns_mesh import MESH_MODES, MODES, ROOT, BenchPath, Network
from bench.peers import BODY_PATH, LOAD_CPU, PROXY_CPU
from bench.procs import cpu_busy, cpu_seconds
from bench.tools import git_rev
from tulle.net.netns import missing_requirements

TARGET_ADDED_P99_MS = 0.3
"""Issue 11's goal: Istio 1.20's two sidecars added 0.298 ms at p99."""


def _missing() -> str | None:
    why = missing_requirements()
    if why is not None:
        return why
    tools = [t for t in ("nginx", "haproxy", "curl", "ss", "setpriv", "iptables", "taskset")
             if shutil.which(t) is None]
    return f"not installed: {', '.join(tools)}" if tools else None


def load(path: BenchPath, args: argparse.Namespace, cp_pids: list[int]) -> dict[str, Any]:
    """One fixed-rate phase from inside the client pod; the proxies' CPU meanwhile (and the
    control plane's, which shares CPU 1 with the load generator)."""
    cmd = path.client.argv(["taskset", "-c", str(LOAD_CPU), sys.executable, "-m",
                            "bench.loadgen", "--host", path.host, "--port", str(path.port),
                            "--path", BODY_PATH, "--rate", str(args.rate), "--duration",
                            str(args.duration), "--warmup", str(args.warmup),
                            "--connections", str(args.connections),
                            "--pacing", getattr(args, "pacing", "thread")])
    busy0 = cpu_busy()
    cpu0 = cpu_seconds(path.proxy_pids)[0]
    cp0 = cpu_seconds(cp_pids)[0]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                         timeout=args.warmup + args.duration + 30)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(path.proxy_pids)[0] - cpu0
    cp = cpu_seconds(cp_pids)[0] - cp0
    busy1 = cpu_busy()
    if out.returncode != 0:
        raise RuntimeError(f"{path.mode}: loadgen failed: {out.stderr.strip()[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout)
    lat = res["latency_ms"]
    cpu0_busy = busy1[PROXY_CPU][0] - busy0[PROXY_CPU][0]
    row = {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
           "p999_ms": lat["p999"], "completed": res["completed"], "errors": res["errors"],
           "non2xx": res["non2xx"], "timed_out": res["timed_out"],
           "achieved_rps": res["achieved_rps"],
           "send_lag_p99_ms": res["send_lag_ms"].get("p99", 0.0),
           "others_on_proxy_cpu": round(max(0.0, cpu0_busy - cpu) / wall, 3),
           "load_cpu_busy": round((busy1[LOAD_CPU][0] - busy0[LOAD_CPU][0]) / wall, 3),
           "control_plane_cpu": round(cp / wall, 3)}
    if path.proxy_pids:
        row["cpu_us_per_req"] = round(cpu * 1e6 / max(1, res["completed"]), 1)
    return row


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        rows = [r[mode] for r in rounds]
        m: dict[str, Any] = {k: spread([row[k] for row in rows])
                             for k in ("p50_ms", "p99_ms", "p999_ms")}
        if mode != "none":
            for q in ("p50", "p99"):
                m[f"added_{q}_ms"] = spread([r[mode][f"{q}_ms"] - r["none"][f"{q}_ms"]
                                             for r in rounds])
            m["cpu_us_per_req"] = spread([row["cpu_us_per_req"] for row in rows])
        m["errors"] = sum(row["errors"] + row["non2xx"] + row["timed_out"] for row in rows)
        m["others_on_proxy_cpu_worst"] = max(row["others_on_proxy_cpu"] for row in rows)
        m["load_cpu_busy_worst"] = max(row["load_cpu_busy"] for row in rows)
        out[mode] = m
    for mode in MESH_MODES:
        out[mode]["vs_haproxy"] = {
            "added_p99_ms_minus_haproxy": spread([
                r[mode]["p99_ms"] - r["haproxy"]["p99_ms"] for r in rounds]),
            "cpu_ratio": spread([r[mode]["cpu_us_per_req"] / r["haproxy"]["cpu_us_per_req"]
                                 for r in rounds])}
    out["targets"] = {f"{mode}_added_p99_ms": {
        "goal": TARGET_ADDED_P99_MS, "median": out[mode]["added_p99_ms"]["median"],
        "met": out[mode]["added_p99_ms"]["median"] <= TARGET_ADDED_P99_MS}
        for mode in MESH_MODES}
    out["targets"]["haproxy_added_p99_ms"] = {
        "goal": TARGET_ADDED_P99_MS, "median": out["haproxy"]["added_p99_ms"]["median"],
        "met": out["haproxy"]["added_p99_ms"]["median"] <= TARGET_ADDED_P99_MS,
        "peer": True}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git": git_rev(),
        "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
        "connections": args.connections, "rounds": args.rounds, "cpus": os.cpu_count(),
        "pacing": getattr(args, "pacing", "thread"), "nice": getattr(args, "nice", 0),
        "loadavg_before": os.getloadavg()[0]}
    why = _missing()
    if why is not None:
        return {"run": info, "skipped": why}
    net = Network()
    try:
        paths = net.build()
        for p in paths.values():
            net.check(p)
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(args.rounds):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            got = {mode: load(paths[mode], args, net.proxy_pids("cp")) for mode in order}
            rounds.append(got)
            print(f"round {r + 1}: " + ", ".join(
                f"{m} p50 {got[m]['p50_ms']:.3f} p99 {got[m]['p99_ms']:.3f}" for m in MODES),
                file=sys.stderr)
    finally:
        net.close()
    info["loadavg_after"] = os.getloadavg()[0]
    return {"run": info, **summarize(rounds), "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=5.0, help="recorded seconds per phase")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--pacing", choices=("thread", "timer"), default="thread",
                    help="the load generator's pacing (bench.loadgen, ADR 0089)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling niceness for the runner and everything it starts (e.g. -10 "
                         "as root on a shared machine), as bench.run's")
    args = ap.parse_args(argv)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every process started
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
