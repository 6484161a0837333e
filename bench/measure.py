"""The measurements: fixed-rate latency, closed-loop maximum rate, CPU per request, memory.

The machine the benchmark runs on may be shared, so the HTTP/1 measurements are taken in
*rounds*: every peer (and the direct connection) is running at once, idle but for the one
being loaded, and each round loads each of them in turn — rotating the order — so a burst of
someone else's work lands on all peers alike instead of on whichever happened to run then.
Every figure is taken per round and reported as the **median of the rounds with their
spread** (`<key>_range`: the smallest and largest round, `<key>_by_round`: each), never the
best round (issue 13); percentiles of all rounds' latency samples merged are kept beside
them (`pooled_ms`).  The h2c, TCP and gRPC passes run in rounds the same way (`extra_rounds`).

"At saturation" (`cpu_us_per_req_sat`, `cpu_util_sat`) is taken with the proxy held to a CPU
quota when the run has one (`bench/cpu_quota.py`, ADR 0077): the proxy is then the limit of
its run whatever the load side can do, and `cpu_util_sat` is the share of its quota it used.
The closed-loop maximum rate is still measured without a quota (`rps_max`, and
`cpu_us_per_req_max_rate` / `cpu_util_max_rate` beside it).  Without a quota the maximum
rate's figures are the saturation figures, as before, and a proxy busy for less than 95% of
its CPU there leaves its comparisons undecided (`bench/verdicts.py`).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu_quota import CpuQuota, Throttling
from bench.loadgen import percentiles
from bench.peers import (
    GRPC_H2LOAD_HEADERS,
    GRPC_PATH,
    GRPC_REQUEST_FILE,
    LOAD_CPU,
    PROXY_CPU,
    Running,
)
from bench.procs import RssSampler, cpu_busy, cpu_seconds, rss_bytes
from bench.tools import parse_h2load, run_h2load, run_loadgen, run_wrk

MB = 1024 * 1024


def rnd(x: float, nd: int = 3) -> float:
    return round(x, nd)


SPREAD_KEYS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "cpu_us_per_req", "rps_max",
               "cpu_us_per_req_sat", "cpu_util_sat", "cpu_us_per_req_max_rate",
               "cpu_util_max_rate", "throttled_share_sat")
"""The figures reported as the median of the rounds with their spread."""


def with_spread(out: dict[str, Any], rounds: list[dict[str, Any]],
                keys: tuple[str, ...] = SPREAD_KEYS) -> dict[str, Any]:
    """Set each of `keys` found in every round to the median of the rounds, with
    `<key>_range` ([min, max]) and `<key>_by_round` beside it."""
    for key in keys:
        values = [r[key] for r in rounds if isinstance(r.get(key), (int, float))]
        if not values or len(values) != len(rounds):
            continue
        nd = (0 if key == "rps_max" else 4 if key.endswith("_ms")
              else 2 if key.startswith(("cpu_util", "throttled")) else 1)
        out[key] = rnd(statistics.median(values), nd) if nd else round(statistics.median(values))
        out[f"{key}_range"] = [rnd(min(values), nd), rnd(max(values), nd)]
        out[f"{key}_by_round"] = [rnd(v, nd) for v in values]
    return out


@dataclass(frozen=True)
class Plan:
    fixed_rate: float
    rounds: int
    fixed_s: float
    """Recorded seconds of fixed-rate load per peer per round."""
    warmup_s: float
    fixed_conns: int
    wrk_s: float
    """Seconds of closed-loop load per peer per round."""
    wrk_conns: int
    extra_s: float
    """Seconds per h2c / TCP run; 0 skips those sections."""
    pair_rounds: int = 0
    """Rounds under the quota in which the two proxies of a same-proxy cost pair (filters,
    retries, telemetry: `verdicts.PAIR_TARGETS` with `paired`) run back to back, alternating
    which goes first (ADR 0079); 0: none, their ratio comes from the rotating rounds."""
    pacing: str = "thread"
    """What wakes the fixed-rate generator's idle connections (`bench.loadgen --pacing`,
    ADR 0089)."""


class Meter:
    """CPU used by the proxy during one phase, and how busy both CPUs were with anything else.

    `others_on_proxy_cpu` is the share of CPU 0 that processes other than the proxy used
    (other jobs on a shared machine, softirq work not charged to a process); `load_cpu_busy` is
    how busy CPU 1 (origin, load generator, and anything else) was.  Near 1 means contended.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.proxy_s = self.proxy_ticks_s = self.wall = 0.0
        self.others_on_proxy_cpu = self.load_cpu_busy = self.steal = 0.0

    def __enter__(self) -> Meter:
        self._c0 = cpu_seconds(self.pids)
        self._b0 = cpu_busy()
        self._w0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        c1 = cpu_seconds(self.pids)
        b1 = cpu_busy()
        self.wall = time.monotonic() - self._w0
        self.proxy_s = c1[0] - self._c0[0]
        self.proxy_ticks_s = c1[1] - self._c0[1]
        busy0 = b1[PROXY_CPU][0] - self._b0[PROXY_CPU][0]
        busy1 = b1[LOAD_CPU][0] - self._b0[LOAD_CPU][0]
        self.others_on_proxy_cpu = max(0.0, busy0 - self.proxy_s) / self.wall
        self.load_cpu_busy = busy1 / self.wall
        self.steal = sum(b1[c][1] - self._b0[c][1] for c in (PROXY_CPU, LOAD_CPU)) / self.wall

    def contention(self) -> dict[str, float]:
        return {"others_on_proxy_cpu": rnd(self.others_on_proxy_cpu, 2),
                "load_cpu_busy": rnd(self.load_cpu_busy, 2), "steal": rnd(self.steal, 2)}


@dataclass
class Tally:
    """One peer's HTTP/1 measurements, summed over rounds."""

    target: Running
    sampler: RssSampler
    rss_idle: int = 0
    samples: list[float] = field(default_factory=list)
    fixed_rounds: list[dict[str, Any]] = field(default_factory=list)
    wrk_rounds: list[dict[str, Any]] = field(default_factory=list)
    fixed_cpu: float = 0.0
    fixed_ticks: float = 0.0
    fixed_done: int = 0
    sat_cpu: float = 0.0
    sat_wall: float = 0.0
    sat_done: int = 0
    quota_rounds: list[dict[str, Any]] = field(default_factory=list)
    paired: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The pair rounds under the quota, by the peer each was paired with (ADR 0079)."""

    def fixed_round(self, plan: Plan) -> None:
        with Meter(self.target.pids) as m:
            res = run_loadgen(self.target.port, rate=plan.fixed_rate, duration=plan.fixed_s,
                              warmup=plan.warmup_s, connections=plan.fixed_conns,
                              path=self.target.path, headers=self.target.headers,
                              pacing=plan.pacing)
        self.samples.extend(res.pop("samples_ms"))
        res["contention"] = m.contention()
        res["proxy_cpu_s"] = rnd(m.proxy_s, 4)
        self.fixed_rounds.append(res)
        self.fixed_cpu += m.proxy_s
        self.fixed_ticks += m.proxy_ticks_s
        self.fixed_done += res["completed"]

    def wrk_round(self, plan: Plan) -> None:
        with Meter(self.target.pids) as m:
            res = run_wrk(self.target.port, duration=plan.wrk_s, connections=plan.wrk_conns,
                          path=self.target.path, headers=self.target.headers)
        res["contention"] = m.contention()
        res["proxy_cpu_s"] = rnd(m.proxy_s, 4)
        res["wall_s"] = rnd(m.wall, 4)
        self.wrk_rounds.append(res)
        self.sat_cpu += m.proxy_s
        self.sat_wall += m.wall
        self.sat_done += res["requests"]

    def quota_round(self, plan: Plan, quota: CpuQuota, partner: str = "") -> None:
        """A closed-loop round with the proxy held to `quota`: CPU per request at saturation
        (with a `partner`, a pair round run back to back with that peer's)."""
        t = self.target
        rounds = self.paired.setdefault(partner, []) if partner else self.quota_rounds
        rounds.append(held_run(t.pids, quota, lambda: run_wrk(
            t.port, duration=plan.wrk_s, connections=plan.wrk_conns, path=t.path,
            headers=t.headers)))

    def result(self) -> dict[str, Any]:
        lat = percentiles(self.samples)
        per_round: list[dict[str, Any]] = []
        quotas: list[dict[str, Any] | None] = (
            list(self.quota_rounds) if self.quota_rounds else [None] * len(self.wrk_rounds))
        for f, w, q in zip(self.fixed_rounds, self.wrk_rounds, quotas, strict=True):
            r: dict[str, Any] = {f"{k}_ms": f["latency_ms"][k] for k in ("p50", "p90", "p99", "p999")}
            r["rps_max"] = w["rps"]
            if self.target.pids:
                r["cpu_us_per_req"] = f["proxy_cpu_s"] * 1e6 / max(1, f["completed"])
                r.update(saturation(w["proxy_cpu_s"], w["wall_s"], w["requests"], q))
            per_round.append(r)
        out: dict[str, Any] = {
            "pooled_ms": {k: rnd(lat[k], 4) for k in ("p50", "p90", "p99", "p999", "max", "mean")},
            "latency_samples": len(self.samples),
            "p99_ms_by_round": [f["latency_ms"]["p99"] for f in self.fixed_rounds],
            "rps_by_round": [round(w["rps"]) for w in self.wrk_rounds],
        }
        with_spread(out, per_round)
        if self.paired:
            out["paired"] = {partner: paired_figures(rounds)
                             for partner, rounds in self.paired.items()}
        if self.target.pids:
            out["cpu_us_per_req_ticks"] = rnd(self.fixed_ticks * 1e6 / max(1, self.fixed_done), 1)
            out["rss_idle_mb"] = rnd(self.rss_idle / MB, 1)
            out["rss_mb"] = rnd(self.sampler.peak / MB, 1)

        def worst(rounds: list[dict[str, Any]], key: str) -> float:
            return float(max(r["contention"][key] for r in rounds))

        out["contention"] = {
            phase: {k: worst(rounds, k) for k in ("others_on_proxy_cpu", "load_cpu_busy", "steal")}
            for phase, rounds in (("fixed", self.fixed_rounds), ("sat", self.wrk_rounds))}
        problems = []
        for f in self.fixed_rounds:
            if f["errors"] or f["timed_out"] or f["non2xx"]:
                problems.append(f"fixed rate: {f['errors']} errors, {f['timed_out']} timed out, "
                                f"{f['non2xx']} non-2xx")
        for w in self.wrk_rounds:
            if w["non2xx"] or w["socket_errors"]:
                problems.append(f"wrk: {w['non2xx']} non-2xx, {w['socket_errors']} socket errors")
        problems.extend(f"under the CPU quota: {q['errors']} non-2xx or socket errors"
                        for q in self.quota_rounds if q["errors"])
        problems.extend(f"in a pair round with {partner}: {q['errors']} non-2xx or socket errors"
                        for partner, rounds in self.paired.items() for q in rounds if q["errors"])
        if problems:
            out["problems"] = problems
        out["fixed_rounds"] = self.fixed_rounds
        out["wrk_rounds"] = self.wrk_rounds
        if self.quota_rounds:
            out["quota_rounds"] = self.quota_rounds
            out["cpu_quota"] = self.quota_rounds[0]["cpu_quota"]
        return out


def held_run(pids: list[int], quota: CpuQuota,
             run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run` (a load generator's run) with `pids` held to `quota`: its record
    (`quota_record`)."""
    with quota.holding(pids) as throttling, Meter(pids) as m:
        load = run()
    return quota_record(load, m, quota, throttling)


def quota_record(load: dict[str, Any], m: Meter, quota: CpuQuota,
                 throttling: Throttling) -> dict[str, Any]:
    """What a round under `quota` keeps: the load's counts, the proxy's CPU and wall time,
    and how often the kernel throttled it (the evidence that it was the limit)."""
    return {"requests": load["requests"], "rps": load["rps"], "proxy_cpu_s": rnd(m.proxy_s, 4),
            "wall_s": rnd(m.wall, 4), "cpu_quota": quota.share,
            "throttled_share": rnd(throttling.share, 3), "contention": m.contention(),
            "errors": load.get("non2xx", 0) + load.get("socket_errors", 0)
            + load.get("failed", 0) + load.get("not200", 0)}


def saturation(cpu_s: float, wall_s: float, requests: int,
               quota: dict[str, Any] | None) -> dict[str, float]:
    """A round's saturation figures: from its quota round when there is one (the maximum
    rate's own then kept as `*_max_rate`), else from the maximum rate."""
    at_max = {"cpu_us_per_req_sat": cpu_s * 1e6 / max(1, requests),
              "cpu_util_sat": cpu_s / max(1e-9, wall_s)}
    if quota is None:
        return at_max
    return {"cpu_us_per_req_max_rate": at_max["cpu_us_per_req_sat"],
            "cpu_util_max_rate": at_max["cpu_util_sat"], **quota_figures(quota)}


def quota_figures(quota: dict[str, Any]) -> dict[str, float]:
    """A round under the CPU quota as saturation figures: CPU per request, the share of the
    quota used, the share of periods throttled."""
    return {"cpu_us_per_req_sat": quota["proxy_cpu_s"] * 1e6 / max(1, quota["requests"]),
            "cpu_util_sat": quota["proxy_cpu_s"] / max(1e-9, quota["wall_s"]) / quota["cpu_quota"],
            "throttled_share_sat": quota["throttled_share"]}


def paired_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One peer's pair rounds (ADR 0079): each round's saturation figures, as lists."""
    figures = [quota_figures(q) for q in rounds]
    return {f"{k}_by_round": [rnd(f[k], 2 if k != "cpu_us_per_req_sat" else 1) for f in figures]
            for k in ("cpu_us_per_req_sat", "cpu_util_sat", "throttled_share_sat")}


def http1_rounds(targets: list[Running], plan: Plan, quota: CpuQuota | None = None,
                 pairs: Sequence[tuple[str, str]] = ()) -> dict[str, dict[str, Any]]:
    """All fixed-rate rounds first (so wrk's load never precedes them), then all wrk rounds,
    then (with a `quota`) the rounds at saturation under it, then (with a quota and
    `plan.pair_rounds`) each of `pairs`' two peers back to back under it, `pair_rounds`
    times, alternating which runs first (ADR 0079)."""
    tallies = [Tally(t, RssSampler(t.pids)) for t in targets]
    time.sleep(0.3)  # let start-up allocations settle
    for t in tallies:
        t.rss_idle = rss_bytes(t.target.pids)
        if t.target.pids:
            t.sampler.start()
    try:
        n = len(tallies)
        for phase in ("fixed", "wrk", "quota") if quota is not None else ("fixed", "wrk"):
            for i in range(plan.rounds):
                order = tallies[i % n:] + tallies[: i % n]
                for t in order:
                    if phase == "quota" and not t.target.pids:
                        continue  # (direct: no proxy to hold)
                    print(f"  {phase} round {i + 1}/{plan.rounds}: {t.target.name}", flush=True)
                    if phase == "fixed":
                        t.fixed_round(plan)
                    elif phase == "wrk":
                        t.wrk_round(plan)
                    else:
                        assert quota is not None
                        t.quota_round(plan, quota)
        by_name = {t.target.name: t for t in tallies}
        for a, b in pairs:
            if quota is None or a not in by_name or b not in by_name:
                continue
            for i in range(plan.pair_rounds):
                first, second = (by_name[a], by_name[b]) if i % 2 == 0 else (by_name[b], by_name[a])
                for t, other in ((first, second), (second, first)):
                    print(f"  pair round {i + 1}/{plan.pair_rounds}: {t.target.name} "
                          f"(with {other.target.name})", flush=True)
                    t.quota_round(plan, quota, partner=other.target.name)
    finally:
        for t in tallies:
            t.sampler.stop()
    return {t.target.name: t.result() for t in tallies}


def measure_extra(r: Running, protocol: str, plan: Plan,
                  quota: CpuQuota | None = None) -> dict[str, Any]:
    """h2c (h2load) or TCP (wrk through the relay): throughput and CPU per request (at
    saturation under `quota` when given, measured after the maximum rate)."""
    sampler = RssSampler(r.pids)
    time.sleep(0.2)
    idle = rss_bytes(r.pids)

    def run() -> dict[str, Any]:
        if protocol == "h2c":
            return run_h2load(r.port, duration=plan.extra_s, clients=10, streams=10)
        return run_wrk(r.port, duration=plan.extra_s, connections=plan.wrk_conns)

    with sampler.running(), Meter(r.pids) as m:
        load = run()
    out: dict[str, Any] = {
        "rps_max": round(load["rps"]),
        "rss_idle_mb": rnd(idle / MB, 1), "rss_mb": rnd(sampler.peak / MB, 1),
        "contention": m.contention(), "load": load}
    out.update(_under_quota(r, quota, run, m, load))
    failed = load.get("failed", 0) or load.get("non2xx", 0) or load.get("socket_errors", 0)
    if failed:
        out.setdefault("problems", []).append(f"{failed} failed requests")
    return out


def _under_quota(r: Running, quota: CpuQuota | None, run: Callable[[], dict[str, Any]],
                 m: Meter, load: dict[str, Any]) -> dict[str, Any]:
    """The saturation figures of an h2c / TCP / gRPC pass: the same load run again with the
    proxy held to `quota` (`saturation`), or the maximum rate's (`m`, `load`) without one."""
    if quota is None or not r.pids:
        return {k: rnd(v, 2 if k.startswith("cpu_util") else 1)
                for k, v in saturation(m.proxy_s, m.wall, load["requests"], None).items()}
    q = held_run(r.pids, quota, run)
    out: dict[str, Any] = {k: rnd(v, 2 if k.startswith(("cpu_util", "throttled")) else 1)
                           for k, v in saturation(m.proxy_s, m.wall, load["requests"], q).items()}
    out["cpu_quota"] = quota.share
    out["quota_load"] = q
    if q["errors"]:
        out["problems"] = [f"under the CPU quota: {q['errors']} failed"]
    return out


GRPC_CLIENTS = 10
GRPC_STREAMS = 10


def run_h2load_grpc(port: int, tmp: Path, *, duration: float, log: Path) -> dict[str, Any]:
    """h2load POSTing one gRPC message per stream; per-call latency from its --log-file."""
    cmd = ["taskset", "-c", str(LOAD_CPU), "h2load", "-t1", f"-c{GRPC_CLIENTS}",
           f"-m{GRPC_STREAMS}", f"-D{duration:g}", "-d", str(tmp / GRPC_REQUEST_FILE),
           *GRPC_H2LOAD_HEADERS, f"--log-file={log}", f"http://127.0.0.1:{port}{GRPC_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 30)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr.strip()}")
    res = parse_h2load(out.stdout)
    res.update(clients=GRPC_CLIENTS, streams=GRPC_STREAMS, duration_s=duration)
    samples: list[float] = []
    not200 = 0
    with log.open() as f:
        for line in f:  # start µs since epoch, status, µs to the end of the response
            _, status, us = line.split("\t")
            if status != "200":
                not200 += 1
            samples.append(int(us) / 1000)
    res["not200"] = not200
    res["latency_ms"] = {k: rnd(v, 3) for k, v in percentiles(samples).items()}
    return res


def measure_grpc(r: Running, plan: Plan, tmp: Path,
                 quota: CpuQuota | None = None) -> dict[str, Any]:
    """gRPC unary calls through `r` (or straight to the origin for `direct`), closed loop:
    calls per second, proxy CPU per call, memory, and the calls' latency under that load."""
    sampler = RssSampler(r.pids)
    time.sleep(0.2)
    idle = rss_bytes(r.pids)
    def run() -> dict[str, Any]:
        return run_h2load_grpc(r.port, tmp, duration=plan.extra_s,
                               log=tmp / f"h2load-grpc-{r.name}.log")

    with sampler.running(), Meter(r.pids) as m:
        load = run()
    lat = load["latency_ms"]
    out: dict[str, Any] = {"rps_max": round(load["rps"])}
    out.update({f"{k}_ms": lat[k] for k in ("p50", "p90", "p99", "p999", "max", "mean") if k in lat})
    if r.pids:
        out.update({"rss_idle_mb": rnd(idle / MB, 1), "rss_mb": rnd(sampler.peak / MB, 1)})
        out.update(_under_quota(r, quota, run, m, load))
    out.update(contention=m.contention(), load=load)
    failed = load.get("failed", 0) + load["not200"]
    if failed:
        out.setdefault("problems", []).append(
            f"{load.get('failed', 0)} failed calls, {load['not200']} not 200")
    return out


GRPC_RSS_CALLS = 100_000


def grpc_rss_after_calls(r: Running, tmp: Path, calls: int = GRPC_RSS_CALLS) -> dict[str, Any]:
    """Issue 13: RSS after `calls` gRPC calls on ONE connection (10 streams at a time), next
    to the RSS after the first tenth of them: memory must not grow with the number of calls
    (closed streams forgotten).  RSS is read with the connection still open."""
    first = max(1, calls // 10)
    cmd = ["taskset", "-c", str(LOAD_CPU), "h2load", "-t1", "-c1", f"-m{GRPC_STREAMS}",
           "-d", str(tmp / GRPC_REQUEST_FILE), *GRPC_H2LOAD_HEADERS,
           f"http://127.0.0.1:{r.port}{GRPC_PATH}"]
    out: dict[str, Any] = {"calls": calls}
    for label, n in (("rss_mb_after_10k", first), ("rss_mb_after_100k", calls)):
        res = subprocess.run([*cmd[:6], f"-n{n}", *cmd[6:]], capture_output=True, text=True,
                             check=False, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"h2load failed ({res.returncode}): {res.stderr.strip()}")
        load = parse_h2load(res.stdout)
        if load.get("failed", 0) or load.get("requests", 0) < n:
            raise RuntimeError(f"h2load: {load}")
        out[label] = rnd(rss_bytes(r.pids) / MB, 1)
    return out
