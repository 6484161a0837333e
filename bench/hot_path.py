"""The compiled HTTP/1 hot path and cheap detection against HAProxy, in one run (ADR 0052).

    .venv/bin/python -m bench.hot_path [--rounds 3] [--seconds 4] [--base DIR] [--json FILE]

Peers, all started together and loaded one at a time in rotating order (ABAB...), each round
running every phase on every peer, so a burst of other work on a shared machine hits all alike:

* `haproxy`: one thread, keep-alive both sides (`bench/peers.py`'s config);
* `tulle`: an `http1` listener, the compiled hot path (checked: the proxy process has the mypyc
  group library mapped, /proc/PID/maps);
* `tulle-pure`: the same with ``TULLE_PURE=1`` (the Python source of the same modules);
* `tulle-auto`: the compiled proxy with an `auto` listener (protocol detection per connection);
* `relay`: `bench/relay.py`, a minimal uvloop + httptools relay on the same CPU: the floor a
  proxy written in Python on this event loop can reach (issue 13 asks for it as a row);
* `tulle-base` (with ``--base DIR``): the tree at DIR (e.g. ``git archive`` of the commit
  before this work) with its defaults: the "before".

Phases: `keepalive` (wrk, 1 thread, 50 connections: CPU µs per request at saturation) and
`close` (wrk, 10 connections, ``Connection: close``: a new connection per request, where
detection is paid).  Each proxy is held to half a CPU by a cgroup CPU quota while it is loaded
(`--sat-quota`, ADR 0077), so it and not the load side is the limit; `util` is then the share
of its quota it used (0 for no quota: the maximum rate, and `util` in CPUs).  Figures: per
peer and phase, the median over the rounds of proxy CPU µs per request, with min and max; per
round the ratio to HAProxy, and the median of those.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cpu_quota import CpuQuota, enter_quota
from bench.peers import (
    PROXY_CPU,
    Running,
    start_haproxy,
    start_origin,
    start_relay,
    tulle_cmd,
    tulle_config,
)
from bench.procs import ProcessSet, compiled, cpu_seconds, free_port, tree, wait_port
from bench.tools import git_rev, run_wrk

PHASES = {"keepalive": {"connections": 50, "headers": ()},
          "close": {"connections": 10, "headers": ("Connection: close",)}}


def start_tulle_variant(ps: ProcessSet, origin_port: int, name: str, *, protocol: str = "http1",
                        env: dict[str, str] | None = None) -> Running:
    port, admin = free_port(), free_port()
    cfg: dict[str, Any] = tulle_config(port, admin, origin_port, "http1")
    cfg["listeners"][0]["protocol"] = protocol  # type: ignore[index]
    conf = ps.tmp / f"{name}.json"
    conf.write_text(json.dumps(cfg, indent=2))
    proc = ps.start(name, [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                           "--watch-interval", "0", "--log-level", "warning"],
                    cpu=PROXY_CPU, env=env)
    wait_port(port, proc)
    return Running(name, port, proc, tree(proc.pid))


def load(r: Running, phase: str, seconds: float, quota: CpuQuota | None) -> dict[str, Any]:
    spec = PHASES[phase]
    with contextlib.ExitStack() as stack:
        throttling = stack.enter_context(quota.holding(r.pids)) if quota is not None else None
        c0, _ = cpu_seconds(r.pids)
        t0 = time.monotonic()
        res = run_wrk(r.port, duration=seconds, connections=int(spec["connections"]),  # type: ignore[call-overload]
                      headers=tuple(spec["headers"]))  # type: ignore[arg-type]
        wall = time.monotonic() - t0
        c1, _ = cpu_seconds(r.pids)
    n = max(res["requests"], 1)
    out = {"cpu_us_per_req": (c1 - c0) / n * 1e6, "rps": res["rps"],
           "cpu_util": (c1 - c0) / wall / (quota.share if quota is not None else 1.0),
           "requests": res["requests"], "errors": res["socket_errors"] + res["non2xx"]}
    if throttling is not None:
        out["throttled_share"] = round(throttling.share, 3)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--base", default="", help="a source tree (its src/) to run as tulle-base")
    ap.add_argument("--json", default="")
    ap.add_argument("--peers", default="haproxy,tulle,tulle-pure,tulle-auto,relay",
                    help="which peers (tulle-base is added by --base)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--sat-quota", type=float, default=0.5,
                    help="share of a CPU each proxy may use while loaded (0: no quota)")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    env.pop("TULLE_PURE", None)
    with contextlib.ExitStack() as stack:
        # the quota's group first: it is removed after the processes below are stopped
        quota, method = enter_quota(stack, args.sat_quota or None)
        print("loaded:", method, file=sys.stderr)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tulle-hotpath-"))
        ps = stack.enter_context(ProcessSet(Path(tmp)))
        Path(tmp).chmod(0o755)  # nginx workers drop privileges and must read the origin's file
        origin = start_origin(ps)
        starters = {
            "haproxy": lambda: start_haproxy(ps, origin.port, "http1"),
            "tulle": lambda: start_tulle_variant(ps, origin.port, "tulle", env=env),
            "tulle-pure": lambda: start_tulle_variant(ps, origin.port, "tulle-pure",
                                                      env={**env, "TULLE_PURE": "1"}),
            "tulle-auto": lambda: start_tulle_variant(ps, origin.port, "tulle-auto",
                                                      protocol="auto", env=env),
            "tulle-batch": lambda: start_tulle_variant(ps, origin.port, "tulle-batch",
                                                       env={**env, "TULLE_BATCH": "1"}),
            "relay": lambda: start_relay(ps, origin.port)}
        names = ["haproxy", *(n for n in args.peers.split(",") if n != "haproxy")]
        peers = [starters[name]() for name in names if name in starters]  # haproxy: the ratios
        phases = [p for p in args.phases.split(",") if p in PHASES]
        if args.base:
            base_src = str(Path(args.base).resolve() / "src")
            peers.append(start_tulle_variant(ps, origin.port, "tulle-base",
                                             env={**env, "PYTHONPATH": base_src}))
            if "tulle-auto" in names:  # the base tree's auto listener: detection's "before"
                peers.append(start_tulle_variant(ps, origin.port, "tulle-auto-base",
                                                 protocol="auto",
                                                 env={**env, "PYTHONPATH": base_src}))
        modes = {r.name: ("compiled" if compiled(r.pids) else "pure")
                 for r in peers if r.name.startswith("tulle")}
        print("modes:", modes, file=sys.stderr)
        loadavg_before = os.getloadavg()
        rounds: list[dict[str, dict[str, Any]]] = []
        for i in range(args.rounds):
            order = peers[i % len(peers):] + peers[:i % len(peers)]
            got: dict[str, dict[str, Any]] = {}
            for phase in phases:
                for r in order:
                    got.setdefault(r.name, {})[phase] = m = load(r, phase, args.seconds, quota)
                    print(f"round {i} {phase:9} {r.name:11} {m['cpu_us_per_req']:7.1f} µs/req "
                          f"{m['rps']:9.0f} rps util {m['cpu_util']:.2f} err {m['errors']}",
                          file=sys.stderr)
            rounds.append(got)
        out: dict[str, Any] = {"git_rev": git_rev(), "rounds": rounds, "modes": modes,
                               "loaded": method,
                               "loadavg_before": loadavg_before,
                               "loadavg_after": os.getloadavg(), "peers": {}, "ratios": {}}
        for r in peers:
            out["peers"][r.name] = {
                phase: {"cpu_us_per_req": summary([g[r.name][phase]["cpu_us_per_req"]
                                                   for g in rounds]),
                        "rps": summary([g[r.name][phase]["rps"] for g in rounds])}
                for phase in phases}
            if r.name != "haproxy":
                out["ratios"][f"{r.name}_vs_haproxy"] = {
                    phase: summary([g[r.name][phase]["cpu_us_per_req"]
                                    / g["haproxy"][phase]["cpu_us_per_req"] for g in rounds])
                    for phase in phases}
    text = json.dumps(out, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps({"peers": out["peers"], "ratios": out["ratios"], "modes": modes,
                      "loadavg": [loadavg_before, out["loadavg_after"]]}, indent=1))


if __name__ == "__main__":
    main()
