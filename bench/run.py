"""The data-plane benchmark: a direct connection vs Tulle vs HAProxy vs nginx, on loopback.

    .venv/bin/python -m bench.run --mode quick --json bench/results/quick.json
    .venv/bin/python -m bench.run --mode full --json bench/results/full.json --doc docs/performance.md

For each peer (HTTP/1.1, 1 KiB responses, keep-alive, one hop):

1. fixed rate (1,000 rps, our own generator, latency from the scheduled send time):
   p50/p90/p99/p99.9 and the proxy's CPU microseconds per request;
2. closed loop (wrk, 1 thread, 50 connections): the maximum rate and CPU per request there;
3. closed loop again with the proxy held to half a CPU (a cgroup CPU quota, ADR 0077): CPU per
   request at saturation, the proxy and not the load side being the limit;
4. resident memory at idle and its peak under load (sampled every 100 ms).

`tulle-filters` is Tulle with a request and a response header modifier on its route, measured
in the same HTTP/1.1 rounds as `tulle` (issue 7: filters cost at most +10% CPU per request).
`tulle-routes` and `haproxy-routes` route among ten rules (header, query and regex matches; the
request matches the last) with two header filters, each checked byte for byte before it is
measured (`bench/routing_peers.py`; issue 8: Tulle at most 2x HAProxy's CPU per request).

`--mode full` adds h2c (h2load), raw TCP (wrk through an L4 relay) and gRPC unary calls (h2load
POSTing gRPC messages to an h2c gRPC origin, h2c end to end; direct as well, and each path
checked first with a real grpcio client).  Peers that cannot run a protocol here are recorded
under `skipped` with the reason.  The proxy under test runs on CPU 0;
the origin, the load generators and this runner on CPU 1.  Everything started is stopped on
exit, Ctrl-C or error (see bench/procs.py).  What the figures decide (the ratios, the
targets, whether a comparison at saturation is decided) is `bench/verdicts.py`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.cpu_quota import CpuQuota, enter_quota
from bench.measure import (
    Plan,
    grpc_rss_after_calls,
    http1_rounds,
    measure_extra,
    measure_grpc,
    with_spread,
)
from bench.mtls_peers import MTLS_STARTERS, hop_rss_mb, measure_handshakes, stop_pair
from bench.peers import (
    LOAD_CPU,
    PROXY_CPU,
    Running,
    Skip,
    check_grpc,
    check_h2c,
    check_http,
    start_grpc_origin,
    start_origin,
    versions,
)
from bench.procs import ProcessSet, compiled
from bench.resilience_peers import RESILIENCE_STARTERS
from bench.telemetry_peers import TELEMETRY_STARTERS
from bench.tools import git_rev
from bench.verdicts import ALL_STARTERS, PAIRED, TARGET_ADDED_P99_MS, derive

PLANS = {
    "quick": Plan(fixed_rate=1000, rounds=2, fixed_s=2, warmup_s=0.3, fixed_conns=10, wrk_s=2,
                  wrk_conns=50, extra_s=0, pair_rounds=2),
    "full": Plan(fixed_rate=1000, rounds=3, fixed_s=3.5, warmup_s=0.5, fixed_conns=10,
                 wrk_s=3, wrk_conns=50, extra_s=5, pair_rounds=6),
}

MTLS_KEPT_KEYS = ("ca_signs_per_s", "ca_signs_target")  # bench/ca.py writes them
HTTP1_ONLY = ("relay", "tulle-filters", "tulle-retry", "tulle-routes", "haproxy-routes", *MTLS_STARTERS,
              *RESILIENCE_STARTERS, *TELEMETRY_STARTERS)
"""Peers measured in the HTTP/1.1 rounds only (not in the h2c, TCP and gRPC passes)."""


SAT_QUOTA = 0.5
"""The share of its CPU each proxy may use in the rounds at saturation (ADR 0077,
`bench/cpu_quota.py`): half, so the load side on the other CPU has about twice the proxy's
CPU and the proxy, not wrk or the origin, is the limit; `--sat-quota 0` measures at the
maximum rate instead."""



def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu_model": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU, "git_rev": git_rev(),
            "versions": versions(), "native_build": native_build()}


def native_build() -> str:
    """How the compiled group was built: the note the build left (`trained: ...` or `no
    profile: why`, ADR 0083)."""
    from tulle import native

    note = native.read_profile_note()
    return note if note is not None else "no note (built before ADR 0083, or not built)"


# -- the run --------------------------------------------------------------------------------


def preflight(plan: Plan) -> None:
    need = ["taskset", "nginx", "haproxy", "wrk"] + (["h2load"] if plan.extra_s else [])
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {' '.join(missing)} (run bench/setup.sh as root)")
    cpus = os.sched_getaffinity(0)
    if not {PROXY_CPU, LOAD_CPU} <= cpus:
        sys.exit(f"needs CPUs {PROXY_CPU} and {LOAD_CPU}; this process may use {sorted(cpus)}")


def run(mode: str, peers: list[str], sat_quota: float | None = SAT_QUOTA,
        pacing: str = "thread") -> dict[str, Any]:
    plan = dataclasses.replace(PLANS[mode], pacing=pacing)
    preflight(plan)
    os.sched_setaffinity(0, {LOAD_CPU})  # this runner and its samplers stay off the proxy's CPU
    res: dict[str, Any] = {
        "mode": mode, "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": plan.__dict__, "machine": machine_info(), "loadavg_before": _loadavg(),
        "skipped": {}, "errors": {}}
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tulle-bench-"))
    tmp.chmod(0o755)  # nginx workers drop privileges and must read the origin's file
    try:
        with contextlib.ExitStack() as stack:
            # the quota's group first: it is removed after the processes below are stopped
            quota, res["saturation"] = enter_quota(stack, sat_quota)
            print(f"at saturation: {res['saturation']}", flush=True)
            ps = stack.enter_context(ProcessSet(tmp))
            origin = start_origin(ps)
            print(f"origin nginx on :{origin.port}; temp dir {tmp}", flush=True)
            targets = [Running("direct", origin.port, None)]
            for name in peers:
                try:
                    r = ALL_STARTERS[name](ps, origin.port, "http1")
                    check_http(r)
                    _record_mode(res, r, "http1")
                    targets.append(r)
                except Skip as exc:
                    res["skipped"][f"{name}/http1"] = str(exc)
                except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                    res["errors"][f"{name}/http1"] = str(exc)
                    print(f"  error: {exc}", flush=True)
            print("HTTP/1.1: " + ", ".join(f"{t.name} :{t.port}" for t in targets), flush=True)
            res.update(http1_rounds(targets, plan, quota, PAIRED))
            for t in targets:
                _show(t.name, res[t.name])
                if t.name in MTLS_STARTERS:
                    _mtls_extra(ps, t.name, res)
                if t.proc is not None:
                    ps.stop(t.proc)
            if plan.extra_s:
                for protocol in ("h2c", "tcp"):
                    _extra_rounds(ps, peers, protocol, origin.port, plan, res, quota)
                if origin.proc is not None:
                    ps.stop(origin.proc)  # idle from here on; the gRPC origin replaces it
                _grpc(ps, peers, plan, res, quota)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_after"] = _loadavg()
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    derive(res)
    return res


def _mtls_extra(ps: ProcessSet, name: str, res: dict[str, Any]) -> None:
    """After a two-hop peer's rounds: each hop's RSS, new handshakes per second (the TLS
    pairs), then stop both hops."""
    peer = res[name]
    try:
        peer["hop_rss_mb"] = hop_rss_mb(name)
        if name != "tulle-2hop":
            print(f"  handshakes: {name} ...", flush=True)
            peer["handshakes"] = measure_handshakes(name)
            print(f"  {peer['handshakes']}", flush=True)
    except (RuntimeError, ValueError, OSError) as exc:
        res["errors"][f"{name}/handshakes"] = str(exc)
        print(f"  error: {exc}", flush=True)
    finally:
        stop_pair(ps, name)


def write_mtls(path: Path, res: dict[str, Any]) -> None:
    """Merge the mTLS figures into `path`, keeping the keys others write there (the CA's
    signing rate comes from the control plane's bench) and nothing else of an older run: a
    range or a round list left from another run would contradict this run's figures."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    old = {k: v for k, v in old.items() if k in MTLS_KEPT_KEYS}
    old.update(res.get("mtls", {}))
    old["added_p99_goal_ms"] = TARGET_ADDED_P99_MS
    old["method"] = ("one `bench.run` run: each figure the median of its rounds "
                     f"({res.get('plan', {}).get('rounds', '?')}); added = the peer's median "
                     "minus the direct path's; *_by_round: each round's peer minus direct")
    old["mtls_run"] = {"mode": res["mode"], "timestamp": res["timestamp"],
                       "git_rev": res["machine"]["git_rev"],
                       "pacing": res.get("plan", {}).get("pacing"),
                       "loadavg_before": res["loadavg_before"],
                       "direct_p99_ms": res.get("direct", {}).get("p99_ms"),
                       "contention": {n: res[n].get("contention") for n in MTLS_STARTERS
                                      if n in res}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2, ensure_ascii=False) + "\n")


def _record_mode(res: dict[str, Any], r: Running, protocol: str) -> None:
    """Which hot path a Tulle peer runs (`modes`), and a problem when it is the Python
    source: a build made stale by an edit during the run would otherwise pass as figures
    of the compiled proxy (it happened: docs/performance.md, the runs of 2026-12-05)."""
    if not r.name.startswith("tulle") or not r.pids:
        return
    mode = "compiled" if compiled(r.pids) else "pure"
    res.setdefault("modes", {})[f"{r.name}/{protocol}"] = mode
    if mode == "pure" and os.environ.get("TULLE_PURE", "") in ("", "0"):  # (as tulle.native reads it)
        res["errors"][f"{r.name}/{protocol}/mode"] = (
            "ran the Python source, not the compiled hot path (a stale build: run `make "
            "native`, and do not edit the tree while the benchmark runs)")


def _grpc(ps: ProcessSet, peers: list[str], plan: Plan, res: dict[str, Any],
          quota: CpuQuota | None) -> None:
    """gRPC unary: the gRPC origin directly and each peer in front of it, in rounds."""
    print("grpc origin ...", flush=True)
    try:
        direct = start_grpc_origin(ps)
    except (Skip, RuntimeError, ValueError, subprocess.SubprocessError, OSError) as exc:
        res["grpc"] = {}
        res["errors"]["origin/grpc"] = str(exc)
        print(f"  error: {exc}", flush=True)
        return
    try:
        _extra_rounds(ps, peers, "grpc", direct.port, plan, res, quota, direct=direct)
    finally:
        if direct.proc is not None:
            ps.stop(direct.proc)


def _extra_rounds(ps: ProcessSet, peers: list[str], protocol: str, origin_port: int,
                  plan: Plan, res: dict[str, Any], quota: CpuQuota | None,
                  direct: Running | None = None) -> None:
    """One of the extra protocols: every peer started and checked, then `plan.rounds` rounds
    loading each in turn (rotating the order, as the HTTP/1 rounds do); each figure is the
    median of the rounds with its spread (`measure.with_spread`)."""
    res[protocol] = {}
    started: list[Running] = [direct] if direct is not None else []
    for name in peers:
        if name in HTTP1_ONLY:
            continue
        print(f"{protocol} {name}: start", flush=True)
        try:
            r = ALL_STARTERS[name](ps, origin_port, protocol)
        except Skip as exc:
            res["skipped"][f"{name}/{protocol}"] = str(exc)
            print(f"  skipped: {exc}", flush=True)
            continue
        except (RuntimeError, ValueError, subprocess.SubprocessError, OSError) as exc:
            res["errors"][f"{name}/{protocol}"] = str(exc)
            print(f"  error: {exc}", flush=True)
            continue
        try:
            if protocol == "grpc":
                check_grpc(r, ps.tmp)
            elif protocol == "h2c":
                check_h2c(r)
            else:
                check_http(r)
            _record_mode(res, r, protocol)
            started.append(r)
        except (RuntimeError, ValueError, subprocess.SubprocessError, OSError) as exc:
            res["errors"][f"{name}/{protocol}"] = str(exc)
            print(f"  error: {exc}", flush=True)
            if r.proc is not None:
                ps.stop(r.proc)
    got: dict[str, list[dict[str, Any]]] = {r.name: [] for r in started}
    failed: set[str] = set()
    n = len(started)
    for i in range(plan.rounds):
        for r in started[i % n:] + started[:i % n] if n else []:
            if r.name in failed:
                continue
            print(f"  {protocol} round {i + 1}/{plan.rounds}: {r.name}", flush=True)
            try:
                m = (measure_grpc(r, plan, ps.tmp, quota) if protocol == "grpc"
                     else measure_extra(r, protocol, plan, quota))
            except (RuntimeError, ValueError, subprocess.SubprocessError, OSError) as exc:
                res["errors"][f"{r.name}/{protocol}"] = str(exc)
                print(f"  error: {exc}", flush=True)
                failed.add(r.name)
                continue
            got[r.name].append(m)
    for r in started:
        rounds = got[r.name]
        if r.name not in failed and rounds:
            res[protocol][r.name] = out = _combine(rounds)
            if protocol == "grpc" and r.name == "tulle":  # issue 13: after 100,000 calls
                out.update(grpc_rss_after_calls(r, ps.tmp))
            _show(f"{protocol} {r.name}", out)
        if r is not direct and r.proc is not None:
            ps.stop(r.proc)


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One peer's rounds of an extra protocol: medians with spread, the first round's idle
    memory, the highest peak, the worst contention, every problem."""
    out: dict[str, Any] = {"rounds": rounds}
    with_spread(out, rounds)
    if "cpu_quota" in rounds[0]:  # (what `unsaturated` reads the busy share against)
        out["cpu_quota"] = rounds[0]["cpu_quota"]
    if "rss_idle_mb" in rounds[0]:
        out["rss_idle_mb"] = rounds[0]["rss_idle_mb"]
        out["rss_mb"] = max(r["rss_mb"] for r in rounds)
    out["contention"] = {k: max(r["contention"][k] for r in rounds)
                         for k in rounds[0].get("contention", {})}
    problems = [p for r in rounds for p in r.get("problems", ())]
    if problems:
        out["problems"] = problems
    return out


def _show(name: str, d: dict[str, Any]) -> None:
    keys = ("p50_ms", "p99_ms", "p999_ms", "cpu_us_per_req", "cpu_us_per_req_sat", "rps_max",
            "cpu_util_sat", "rss_idle_mb", "rss_mb")
    print("  " + "  ".join(f"{k}={d[k]}" for k in keys if k in d), flush=True)
    c = d.get("contention", {})
    for phase, v in (c.items() if "fixed" in c else [("", c)]):
        print(f"  contention {phase}: {v}", flush=True)
    for p in d.get("problems", ()):
        print(f"  problem: {p}", flush=True)


def _on_term(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Tulle data-plane benchmark")
    ap.add_argument("--mode", choices=sorted(PLANS), default="quick")
    ap.add_argument("--peers",
                    default="tulle,tulle-filters,tulle-routes,haproxy,haproxy-routes,nginx,relay",
                    help="comma-separated subset of: " + ",".join(ALL_STARTERS))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling niceness for the runner and everything it starts (e.g. -10 "
                         "on a shared machine, root only); recorded in the results")
    ap.add_argument("--doc", type=Path, help="update the results section of this markdown file")
    ap.add_argument("--sat-quota", type=float, default=SAT_QUOTA,
                    help="share of a CPU each proxy may use in the rounds at saturation "
                         "(cgroup CPU quota; 0: none, saturation at the maximum rate instead)")
    ap.add_argument("--pacing", choices=("thread", "timer"), default="thread",
                    help="the fixed-rate generator's pacing (bench.loadgen, ADR 0089)")
    ap.add_argument("--mtls-json", type=Path,
                    help="merge the mTLS row's figures into this file (bench/results/mtls.json)")
    args = ap.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in ALL_STARTERS]
    if unknown:
        ap.error(f"unknown peers: {unknown}")
    # SIGINT too: a job started in the background of a script inherits SIGINT ignored.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_term)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every process started
    res = run(args.mode, peers, args.sat_quota or None, args.pacing)
    res["nice"] = args.nice
    text = json.dumps(res, indent=2, ensure_ascii=False) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
        print(f"wrote {args.json}")
    if args.mtls_json and res.get("mtls"):
        write_mtls(args.mtls_json, res)
        print(f"wrote {args.mtls_json}")
    if args.doc:
        report.update_doc(args.doc, res)
        print(f"updated {args.doc}")
    print(report.summary(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
