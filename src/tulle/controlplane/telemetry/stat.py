"""`tulle stat`'s document: Services, workloads and edges aggregated over a sliding window.

Who sees what (ADR 0046, 0059):
- a **Service** row is what its meshed *clients* got (their outbound rows summed): the
  caller's view, after retries and timeouts, like `linkerd viz stat` of an authority.  It
  counts the requests addressed to the Service (a route of it splitting them to other
  Services' backends: rows with that `parent`) and the requests its own backends took (its
  share of such a split).  Its MESHED counts the reporting workloads its clusters list as
  endpoints (a pod behind `catalog` and `catalog-v1` alike), or, for a Service no snapshot
  has a cluster of, those whose sidecar names it as their own Service;
- a **Workload** row is what the workload's own sidecar served (its inbound rows): every
  client, meshed or not;
- an **edge** is one client workload's outbound rows to one Service.
Rates divide each proxy's requests by the time its reports in the window cover, then add up
across proxies; latency quantiles come from the merged bucket counts (`quantiles.py`, error
at most one bucket); open TCP connections are each proxy's latest gauge, summed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from tulle.controlplane.telemetry.quantiles import empty, merge, quantile
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.proxyconfig.model import ProxyConfig

Snapshots = Callable[[tuple[str, str]], ProxyConfig | None]
"""The snapshot compiled for a workload (namespace, name), if any."""

STAT_API_VERSION = "stat.tulle.dev/v1"
Kind = Literal["Service", "Workload"]


@dataclass(slots=True)
class Stat:
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    buckets: list[int] = field(default_factory=empty)
    latency_sum_ms: float = 0.0
    tcp_open: int = 0
    meshed: set[str] = field(default_factory=set)
    """Proxies whose reports make up this row (a Service row: those serving it)."""

    def to_dict(self) -> dict[str, Any]:
        def q(x: float) -> float | None:
            v = quantile(self.buckets, x)
            return None if v is None else round(v, 3)

        observed = sum(self.buckets)
        return {
            "requests": self.requests,
            "failures": self.failures,
            "successRate": (round(1 - self.failures / self.requests, 6)
                            if self.requests else None),
            "rps": round(self.rps, 3),
            "latencyMs": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99),
                          "mean": round(self.latency_sum_ms / observed, 3) if observed
                          else None},
            "tcpConnections": self.tcp_open,
        }


def _split(key: str) -> tuple[str, str]:
    ns, _, name = key.partition("/")
    return ns, name


Members = Callable[[Collection[str], Collection[str]], dict[str, set[str]]]
"""(Services, reporting workloads) -> the workloads behind each of those Services, where known
(`members_from`)."""


def members_from(snapshots: Snapshots) -> Members:
    """Who is behind each Service, read from the snapshots compiled for the reporting proxies:
    an outbound cluster of a Service lists its endpoints' workloads (`metadata.workload`).  The
    first snapshot that has a cluster of a Service answers for it."""

    def members(services: Collection[str], reporting: Collection[str]) -> dict[str, set[str]]:
        wanted = set(services)
        found: dict[str, set[str]] = {}
        for proxy in sorted(reporting):
            if not wanted:
                break
            cfg = snapshots(_split(proxy))
            if cfg is None:
                continue
            here: dict[str, set[str]] = {}
            for c in cfg.clusters:
                md = c.metadata
                if md is None or not md.service:
                    continue
                svc = f"{md.namespace or cfg.node.namespace}/{md.service}"
                if svc not in wanted:
                    continue
                got = here.setdefault(svc, set())
                for e in c.endpoints:
                    em = e.metadata
                    if em is not None and em.workload:
                        got.add(f"{em.namespace or md.namespace or cfg.node.namespace}/"
                                f"{em.workload}")
            found.update(here)
            wanted -= here.keys()
        return found

    return members


def aggregate(win: StatsWindow, window: float, members: Members | None = None
              ) -> tuple[dict[tuple[Kind, str], Stat], dict[tuple[str, str], Stat]]:
    """Rows by (kind, `namespace/name`) and edges by (client workload, Service); one pass
    over each proxy's reports in the window.  `members`: who is behind each Service (its
    MESHED, where known); else the workloads whose sidecar names the Service as its own."""
    rows: dict[tuple[Kind, str], Stat] = {}
    edges: dict[tuple[str, str], Stat] = {}
    for reports in win.recent(window).values():
        cover = max(sum(r.interval for r in reports), 1e-3)
        last = reports[-1]
        for rep in reports:
            for r in rep.rows():
                direction, workload, service, parent = r.key
                wl = rows.get(("Workload", workload))
                if wl is None:
                    wl = rows[("Workload", workload)] = Stat()
                wl.meshed.add(workload)
                if direction == "inbound":
                    targets = [wl]
                    if service:
                        rows.setdefault(("Service", service), Stat()).meshed.add(workload)
                else:
                    targets = [rows.setdefault(("Service", service), Stat()),
                               edges.setdefault((workload, service), Stat())]
                    if parent and parent != service:  # addressed to `parent`, split to it
                        targets.append(rows.setdefault(("Service", parent), Stat()))
                for s in targets:
                    s.requests += r.requests
                    s.failures += r.failures
                    s.rps += r.requests / cover
                    merge(s.buckets, r.buckets)
                    s.latency_sum_ms += r.latency_sum_ms
                    if rep is last:  # open connections: the latest gauge
                        s.tcp_open += r.tcp_open
    if members is not None:
        reporting = {key for kind, key in rows if kind == "Workload"}
        services = [key for kind, key in rows if kind == "Service"]
        for svc, behind in members(services, reporting).items():
            # The endpoints are the better answer: a node agent's inbound rows name the
            # node's one Service for every workload it fronts.
            rows[("Service", svc)].meshed = behind & reporting
    return rows, edges


def _ref(kind: str, key: str) -> dict[str, str]:
    ns, name = _split(key)
    return {"kind": kind, "namespace": ns, "name": name}


def stat_document(win: StatsWindow, window: float, kind: Kind, *, name: str | None = None,
                  namespace: str | None = None, window_text: str = "",
                  members: Members | None = None) -> dict[str, Any]:
    """The JSON document of `GET /api/v1/stat` (documented in docs/reference/stat.md)."""
    rows, edges = aggregate(win, window, members)
    picked = sorted(key for k, key in rows if k == kind
                    and (namespace is None or _split(key)[0] == namespace)
                    and (name is None or _split(key)[1] == name))
    items = []
    for key in picked:
        s = rows[(kind, key)]
        items.append({**_ref(kind, key), "meshed": len(s.meshed), **s.to_dict()})
    chosen = set(picked)
    side = 1 if kind == "Service" else 0
    edge_items = [{"from": _ref("Workload", src), "to": _ref("Service", dst), **s.to_dict()}
                  for (src, dst), s in sorted(edges.items())
                  if (src, dst)[side] in chosen]
    return {"apiVersion": STAT_API_VERSION, "kind": "Stat",
            "window": window_text or f"{window:g}s", "windowSeconds": window,
            "resourceKind": kind, "items": items, "edges": edge_items}


__all__ = ["STAT_API_VERSION", "Members", "Snapshots", "Stat", "aggregate", "members_from",
           "stat_document"]
