"""What a benchmark run's figures decide: ratios to the reference peers, the targets, and
whether a comparison at saturation is decided at all.

Why a module of its own: `bench/run.py` starts peers and loads them; this reads the figures
it collected (`derive`, in place on the results) and is what the unit tests exercise on
made-up rounds.  Every ratio is the median of the per-round ratios (`_ratio`), and a target
is decided on that ratio (`ratio_target`), never on the best round (issue 13 item 4).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.measure import rnd
from bench.mtls_peers import MTLS_STARTERS
from bench.peers import STARTERS
from bench.resilience_peers import RESILIENCE_STARTERS
from bench.routing_peers import ROUTING_STARTERS
from bench.telemetry_peers import TELEMETRY_STARTERS

ALL_STARTERS = {**STARTERS, **ROUTING_STARTERS, **MTLS_STARTERS, **RESILIENCE_STARTERS,
                **TELEMETRY_STARTERS}
"""Every peer a run can start, by name (`bench.run` starts them; `derive` reads them)."""

TARGET_CPU_RATIO = 1.5
TARGET_RSS_MB = 30.0
TARGET_ADDED_P99_MS = 0.3
TARGET_FILTER_COST = 1.10
"""Issue 7: a route with a request and a response header modifier costs at most +10% CPU per
request over the same route without filters (`tulle-filters` vs `tulle`, same run)."""
TARGET_RETRY_COST = 1.03
"""Issue 10: retries with their budget on a healthy path cost under 3% CPU per request over
the same route without (`tulle-retry` vs `tulle`, same run)."""
TARGET_ROUTING_CPU_RATIO = 2.0
"""Issue 8: ten rules and two header filters cost Tulle at most 2x what the same ACL routing
costs HAProxy, CPU per request (`tulle-routes` vs `haproxy-routes`, same run)."""
TARGET_RESILIENCE_CPU_RATIO = 2.0
"""Issue 10: peak-EWMA, retries and a circuit breaker with metrics on cost Tulle at most 2x what
HAProxy's equivalent (leastconn, retries/retry-on, maxconn/queue) costs, CPU per request
(`tulle-resilience` vs `haproxy-resilience`, same run; `bench/resilience_peers.py`)."""
TARGET_TELEMETRY_COST = 1.15
"""Issue 12: metrics, access logs and tracing (1%) on cost at most +15% CPU per request over
the same proxy with them off (`tulle-telemetry` vs `tulle`, same run;
`bench/telemetry_peers.py`)."""
TARGET_MTLS_ADDED_P99_MS = 0.3
"""Issue 9: two hops over mTLS add at most 0.3 ms p99 at 1,000 rps (Istio 1.20: +0.298 ms)."""
TARGET_MTLS_RSS_MB = 40.0
"""Issue 9: a proxy with an identity stays at or under 40 MB (Istio's sidecar: 60 MB)."""


SATURATED = 0.95
"""A proxy driven at its maximum rate is saturated when busy for at least this much of its one
CPU (of its quota, under one).  Below it the load generator was the limit: the proxy then
answers fewer requests per wake-up and pays more system calls per request, so its "CPU per
request at saturation" is a figure at a lower rate, and a ratio with it decides nothing
(docs/performance.md, "Why the headline is still the 00:03 run": HAProxy at 0.90-0.92 on a
host whose wrk and origin top out at 45,000 req/s)."""

QUOTA_HELD = 1.1
"""Under a quota a proxy uses at most its share (1.0, give or take the kernel's accounting:
0.94-1.08 per round in the runs of 2026-12-05); more means the quota did not hold it."""


def unsaturated(res: dict[str, Any], peers: tuple[str, ...]) -> str | None:
    """Why a comparison at saturation between `peers` is not decided by this run: the first
    whose proxy was busy for less than `SATURATED` of its CPU at its maximum rate, or of its
    quota (`cpu_quota`) in the rounds under one; or, under a quota, that the quota did not
    hold it (more than `QUOTA_HELD` of its share used, or throttled in under half the
    periods: a proxy the quota held is throttled in almost all of them)."""
    for name in peers:
        peer = res.get(name, {})
        busy = peer.get("cpu_util_sat")
        quota = peer.get("cpu_quota")
        throttled = peer.get("throttled_share_sat")
        if quota and isinstance(busy, (int, float)) and (
                busy > QUOTA_HELD or (isinstance(throttled, (int, float)) and throttled < 0.5)):
            return (f"{name} used {busy:.2f} of its CPU quota ({quota:g} of a CPU) and was "
                    f"throttled in {throttled} of the periods: the quota did not hold it")
        if isinstance(busy, (int, float)) and busy < SATURATED:
            if quota:
                return (f"{name} used {busy:.2f} of its CPU quota ({quota:g} of a CPU) "
                        f"(not saturated: the load generator was the limit)")
            return (f"{name} ran at {busy:.2f} of its CPU at its maximum rate (not saturated: "
                    f"the load generator was the limit)")
    return None


def verdict(res: dict[str, Any], key: str, peers: tuple[str, str], met: bool) -> dict[str, Any]:
    """A target's `met`; at saturation (`key` a `*_sat` figure) None with `undecided` saying
    why when a peer it compares was not saturated: never met or missed on a figure taken
    below saturation."""
    why = unsaturated(res, peers) if key.endswith("_sat") else None
    return {"met": met} if why is None else {"met": None, "undecided": why}


@dataclass(frozen=True)
class PairTarget:
    """A target on CPU per request of one peer against another in the same run (at 1,000 rps
    and at saturation), and the `ratios` entry that reports the pair."""

    peer: str
    ref: str
    label: str
    """The target's text, `{at}` standing for "at 1,000 rps" / "at saturation"."""
    bound: float
    ratios: str
    limit_nd: int = 1
    ratio_nd: int = 2
    strict: bool = False
    more_keys: tuple[str, ...] = ()
    paired: bool = False
    """The same proxy with a feature on and off: at saturation the two also run back to back
    in pair rounds (`Plan.pair_rounds`), and those decide the target (ADR 0079)."""


PAIR_TARGETS: tuple[PairTarget, ...] = (
    PairTarget("tulle-filters", "tulle",
               f"two header modifiers ≤ +{TARGET_FILTER_COST - 1:.0%} CPU per request over "
               "no filters ({at})", TARGET_FILTER_COST, "tulle_filters_vs_tulle", ratio_nd=3,
               paired=True),
    PairTarget("tulle-retry", "tulle",
               f"retries and their budget on a healthy path < +{TARGET_RETRY_COST - 1:.0%} CPU "
               "per request ({at})", TARGET_RETRY_COST, "tulle_retry_vs_tulle", limit_nd=2,
               ratio_nd=3, strict=True, paired=True),
    PairTarget("tulle-telemetry", "tulle",
               f"telemetry on ≤ +{TARGET_TELEMETRY_COST - 1:.0%} CPU per request over the same "
               "proxy with it off ({at})", TARGET_TELEMETRY_COST, "telemetry_on_vs_off",
               limit_nd=2, ratio_nd=3, more_keys=("rss_mb",), paired=True),
    PairTarget("tulle-routes", "haproxy-routes",
               f"ten rules + two header filters ≤ {TARGET_ROUTING_CPU_RATIO:g}x HAProxy's ACL "
               "routing, CPU per request ({at})", TARGET_ROUTING_CPU_RATIO,
               "tulle_routes_vs_haproxy_routes"),
    PairTarget("tulle-resilience", "haproxy-resilience",
               f"peak-EWMA + retries + circuit breaker ≤ {TARGET_RESILIENCE_CPU_RATIO:g}x "
               "HAProxy's leastconn + retries + maxconn, CPU per request ({at})",
               TARGET_RESILIENCE_CPU_RATIO, "tulle_resilience_vs_haproxy_resilience"),
)
"""Each peer with what it is measured against: filters (issue 7), retries (10), telemetry (12),
routing (8), resilience (10)."""

PAIRED: tuple[tuple[str, str], ...] = tuple((p.peer, p.ref) for p in PAIR_TARGETS if p.paired)
"""The pairs `measure.http1_rounds` runs back to back at saturation (ADR 0079)."""


def paired_view(res: dict[str, Any], peers: tuple[str, str]) -> dict[str, Any] | None:
    """Both peers' figures at saturation from their pair rounds (ADR 0079), shaped as `res`
    is (`{name: {figure, figure_by_round}}`), for the ratio and saturation checks to read;
    None when the run has no complete pair rounds for them."""
    a, b = peers
    pa = res.get(a, {}).get("paired", {}).get(b)
    pb = res.get(b, {}).get("paired", {}).get(a)
    key = "cpu_us_per_req_sat_by_round"
    if not pa or not pb or not pa.get(key) or len(pa[key]) != len(pb.get(key, ())):
        return None
    view: dict[str, Any] = {}
    for name, rounds in ((a, pa), (b, pb)):
        figures: dict[str, Any] = {"cpu_quota": res[name].get("cpu_quota")}
        for k in ("cpu_us_per_req_sat", "cpu_util_sat", "throttled_share_sat"):
            if rounds.get(f"{k}_by_round"):
                figures[k] = rnd(statistics.median(rounds[f"{k}_by_round"]), 2)
                figures[f"{k}_by_round"] = rounds[f"{k}_by_round"]
        view[name] = figures
    return view


def derive(res: dict[str, Any]) -> None:
    direct = res.get("direct", {})
    for name in ALL_STARTERS:
        peer = res.get(name)
        if not peer or "p99_ms" not in peer or "p99_ms" not in direct:
            continue
        peer["added_p50_ms_vs_direct"] = rnd(peer["p50_ms"] - direct["p50_ms"])
        peer["added_p99_ms_vs_direct"] = rnd(peer["p99_ms"] - direct["p99_ms"])
    ha = res.get("haproxy", {})
    ratios: dict[str, dict[str, float]] = {}
    keys = ("cpu_us_per_req", "cpu_us_per_req_sat", "rss_mb", "p50_ms", "p99_ms",
            "added_p99_ms_vs_direct", "rps_max")
    grpc = res.get("grpc", {})
    grpc_keys = ("cpu_us_per_req_sat", "rps_max", "rss_mb", "p50_ms", "p99_ms")
    for name in ("tulle", "nginx"):
        ratios[f"{name}_vs_haproxy"] = _ratios(res.get(name, {}), ha, keys)
        if grpc:
            ratios[f"grpc_{name}_vs_haproxy"] = _ratios(grpc.get(name, {}),
                                                       grpc.get("haproxy", {}), grpc_keys)
        for extra in ("h2c", "tcp"):  # issue 13: h2c to an HTTP/1.1 origin; raw TCP
            if res.get(extra):
                ratios[f"{extra}_{name}_vs_haproxy"] = _ratios(
                    res[extra].get(name, {}), res[extra].get("haproxy", {}), grpc_keys)
    if res.get("relay"):  # issue 13: the floor of a Python proxy, against HAProxy and Tulle
        ratios["relay_vs_haproxy"] = _ratios(res["relay"], ha, keys)
        ratios["tulle_vs_relay"] = _ratios(res.get("tulle", {}), res["relay"], keys)
    res["ratios"] = ratios
    tu = res.get("tulle", {})
    targets = []
    if "cpu_us_per_req" in tu and "cpu_us_per_req" in ha:
        for key, label in (("cpu_us_per_req", "at 1,000 rps"), ("cpu_us_per_req_sat", "at saturation")):
            targets.append(ratio_target(
                res, f"CPU per request ≤ {TARGET_CPU_RATIO}x HAProxy ({label})", key,
                ("tulle", "haproxy"), TARGET_CPU_RATIO, 1, 2))
    if "rss_mb" in tu:
        targets.append({"target": f"RSS under load ≤ {TARGET_RSS_MB:g} MB", "value": tu["rss_mb"],
                        "limit": TARGET_RSS_MB, "unit": "MB", "met": tu["rss_mb"] <= TARGET_RSS_MB})
    if "added_p99_ms_vs_direct" in tu:
        v = tu["added_p99_ms_vs_direct"]
        targets.append({"target": f"added p99 at 1,000 rps ≤ {TARGET_ADDED_P99_MS} ms over direct",
                        "value": v, "limit": TARGET_ADDED_P99_MS, "unit": "ms",
                        "met": v <= TARGET_ADDED_P99_MS})
    views: dict[str, dict[str, Any] | None] = {}
    """Per pair target, its pair rounds' view (ADR 0079), or None: the rotating rounds decide."""
    for pair in PAIR_TARGETS:
        peer, ref = res.get(pair.peer, {}), res.get(pair.ref, {})
        view = views[pair.ratios] = (paired_view(res, (pair.peer, pair.ref)) if pair.paired
                                     else None)
        for key, label in (("cpu_us_per_req", "at 1,000 rps"),
                           ("cpu_us_per_req_sat", "at saturation")):
            if key in peer and key in ref and ref[key] > 0:
                targets.append(ratio_target(
                    res, pair.label.format(at=label), key, (pair.peer, pair.ref), pair.bound,
                    pair.limit_nd, pair.ratio_nd, strict=pair.strict,
                    view=view if key == "cpu_us_per_req_sat" else None))
        if peer and ref:
            ratios[pair.ratios] = _ratios(peer, ref, (
                "cpu_us_per_req", "cpu_us_per_req_sat", "p50_ms", "p99_ms", "rps_max",
                *pair.more_keys))
            if view is not None:  # the pair rounds decide (ADR 0079); the rotation's kept
                got = ratios[pair.ratios]
                if "cpu_us_per_req_sat" in got:
                    got["cpu_us_per_req_sat_rotation"] = got["cpu_us_per_req_sat"]
                got["cpu_us_per_req_sat"] = rnd(_ratio(view[pair.peer], view[pair.ref],
                                                       "cpu_us_per_req_sat"), 2)
                got["pair_rounds"] = len(view[pair.peer]["cpu_us_per_req_sat_by_round"])
    mtls = derive_mtls(res)
    if "added_p99_ms" in mtls:
        v = mtls["added_p99_ms"]
        targets.append({"target": f"two mTLS hops add ≤ {TARGET_MTLS_ADDED_P99_MS} ms p99 at "
                                  "1,000 rps over direct", "value": v,
                        "limit": TARGET_MTLS_ADDED_P99_MS, "unit": "ms",
                        "met": v <= TARGET_MTLS_ADDED_P99_MS})
    if "rss_mb" in mtls:
        v = mtls["rss_mb"]
        targets.append({"target": f"proxy RSS with an identity ≤ {TARGET_MTLS_RSS_MB:g} MB",
                        "value": v, "limit": TARGET_MTLS_RSS_MB, "unit": "MB",
                        "met": v <= TARGET_MTLS_RSS_MB})
    res["targets"] = targets
    pairs: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
        "tulle_vs_haproxy": (res, ("tulle", "haproxy")),
        "nginx_vs_haproxy": (res, ("nginx", "haproxy")),
        "relay_vs_haproxy": (res, ("relay", "haproxy")),
        "telemetry_on_vs_off": (res, ("tulle-telemetry", "tulle")),
        "tulle_routes_vs_haproxy_routes": (res, ("tulle-routes", "haproxy-routes")),
        "tulle_resilience_vs_haproxy_resilience": (res, ("tulle-resilience",
                                                         "haproxy-resilience")),
    }
    for extra in ("grpc", "h2c", "tcp"):
        if isinstance(res.get(extra), dict):
            pairs[f"{extra}_tulle_vs_haproxy"] = (res[extra], ("tulle", "haproxy"))
    for pair in PAIR_TARGETS:  # every pair's ratio; one the pair rounds decide is checked
        # on those rounds (the filters' and the retries' were not checked at all)
        view = views[pair.ratios]
        pairs[pair.ratios] = (view if view is not None else res, (pair.peer, pair.ref))
    undecided = {name: why for name, (where, peers) in pairs.items()
                 if name in ratios and all(where.get(p) for p in peers)
                 and (why := unsaturated(where, peers)) is not None}
    res["not_saturated"] = undecided
    """The ratios whose `*_sat` figures were taken below saturation, with why: not evidence
    either way (the report says so above its tables)."""


def derive_mtls(res: dict[str, Any]) -> dict[str, Any]:
    """The mTLS row's figures (issue 9), as `bench/results/mtls.json` holds them."""
    out: dict[str, Any] = {}
    direct = res.get("direct", {})
    for key, name in (("", "tulle-mtls"), ("plaintext_", "tulle-2hop"),
                      ("haproxy_", "haproxy-tls")):
        peer = res.get(name)
        if not peer or "p99_ms" not in peer:
            continue
        out[f"{key}added_p50_ms"] = peer.get("added_p50_ms_vs_direct")
        out[f"{key}added_p99_ms"] = peer.get("added_p99_ms_vs_direct")
        out[f"{key}cpu_us_per_req"] = peer.get("cpu_us_per_req")
        for q in ("p50", "p99"):  # each round's own added figure: round i of both ran back to back
            a, b = peer.get(f"{q}_ms_by_round"), direct.get(f"{q}_ms_by_round")
            if a and b and len(a) == len(b):
                out[f"{key}added_{q}_ms_by_round"] = [rnd(x - y) for x, y in zip(a, b, strict=True)]
        if peer.get("cpu_us_per_req_range"):
            out[f"{key}cpu_us_per_req_range"] = peer["cpu_us_per_req_range"]
        if "handshakes" in peer:
            out[f"{key}handshakes_per_s"] = peer["handshakes"]["handshakes_per_s"]
        if "hop_rss_mb" in peer:
            out[f"{key}rss_mb"] = max(peer["hop_rss_mb"])
        if peer.get("problems"):
            out[f"{key}problems"] = peer["problems"]
    if out:
        res["mtls"] = out
    return out


def ratio_target(res: dict[str, Any], label: str, key: str, peers: tuple[str, str],
                 bound: float, limit_nd: int, ratio_nd: int, strict: bool = False,
                 view: dict[str, Any] | None = None) -> dict[str, Any]:
    """A target "`peers[0]` ≤ `bound` times `peers[1]`" on `key` (`<` when `strict`), decided on
    the same ratio `ratios` reports: the median of the per-round ratios (`_ratios`), not the
    ratio of the two medians, which can fall on the other side of the bound when one peer's
    rounds are noisy (telemetry at saturation on 2026-12-05: medians 1.137, rounds 1.19).
    `value` and `limit` (the bound times the reference's median) are shown beside it.
    `view`: the pair's pair rounds (`paired_view`), which then decide it (ADR 0079)."""
    where = view if view is not None else res
    peer, ref = where[peers[0]], where[peers[1]]
    ratio = _ratio(peer, ref, key)
    met = ratio < bound if strict else ratio <= bound
    out = {"target": label, "value": peer[key], "limit": rnd(bound * ref[key], limit_nd),
           "unit": "µs", "ratio": rnd(ratio, ratio_nd), "bound": bound,
           **verdict(where, key, peers, met)}
    if view is not None:
        out["pair_rounds"] = len(peer[f"{key}_by_round"])
    return out


def _ratio(peer: dict[str, Any], ref: dict[str, Any], key: str) -> float:
    """Peer ÷ reference on `key`, unrounded: the median of the per-round ratios when both
    have the same rounds, else the ratio of the figures."""
    a, b = peer.get(f"{key}_by_round"), ref.get(f"{key}_by_round")
    if a and b and len(a) == len(b) and all(x > 0 for x in b):
        return float(statistics.median(x / y for x, y in zip(a, b, strict=True)))
    return float(peer[key] / ref[key])


def _ratios(peer: dict[str, Any], ha: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    """Peer ÷ reference per key: the median of the per-round ratios where both were measured
    in the same rounds (round i of each ran back to back), else the ratio of the figures."""
    out: dict[str, float] = {}
    for k in keys:
        a, b = peer.get(f"{k}_by_round"), ha.get(f"{k}_by_round")
        if (a and b and len(a) == len(b) and all(x > 0 for x in b)) or (
                isinstance(peer.get(k), (int, float)) and isinstance(ha.get(k), (int, float))
                and ha[k] > 0):
            out[k] = rnd(_ratio(peer, ha, k), 2)
    return out
