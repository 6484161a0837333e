"""`tulle stat`'s document: Services, workloads and edges aggregated over a sliding window.

Who sees what (ADR 0046):
- a **Service** row is what its meshed *clients* got (their outbound rows summed): the
  caller's view, after retries and timeouts, like `linkerd viz stat` of an authority;
- a **Workload** row is what the workload's own sidecar served (its inbound rows): every
  client, meshed or not;
- an **edge** is one client workload's outbound rows to one Service.
Rates divide each proxy's requests by the time its reports in the window cover, then add up
across proxies; latency quantiles come from the merged bucket counts (`quantiles.py`, error
at most one bucket); open TCP connections are each proxy's latest gauge, summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tulle.controlplane.telemetry.quantiles import empty, merge, quantile
from tulle.controlplane.telemetry.window import StatsWindow

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


def aggregate(win: StatsWindow, window: float) -> tuple[dict[tuple[Kind, str], Stat],
                                                        dict[tuple[str, str], Stat]]:
    """Rows by (kind, `namespace/name`) and edges by (client workload, Service); one pass
    over each proxy's reports in the window."""
    rows: dict[tuple[Kind, str], Stat] = {}
    edges: dict[tuple[str, str], Stat] = {}
    for reports in win.recent(window).values():
        cover = max(sum(r.interval for r in reports), 1e-3)
        last = reports[-1]
        for rep in reports:
            for r in rep.rows():
                direction, workload, service = r.key
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
                for s in targets:
                    s.requests += r.requests
                    s.failures += r.failures
                    s.rps += r.requests / cover
                    merge(s.buckets, r.buckets)
                    s.latency_sum_ms += r.latency_sum_ms
                    if rep is last:  # open connections: the latest gauge
                        s.tcp_open += r.tcp_open
    return rows, edges


def _ref(kind: str, key: str) -> dict[str, str]:
    ns, name = _split(key)
    return {"kind": kind, "namespace": ns, "name": name}


def stat_document(win: StatsWindow, window: float, kind: Kind, *, name: str | None = None,
                  namespace: str | None = None, window_text: str = "") -> dict[str, Any]:
    """The JSON document of `GET /api/v1/stat` (documented in docs/reference/stat.md)."""
    rows, edges = aggregate(win, window)
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


__all__ = ["STAT_API_VERSION", "Stat", "aggregate", "stat_document"]
