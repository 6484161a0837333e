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
- an **edge** is one client workload's outbound rows to one Service, by backend (what the pods
  took; the topology graph's edges).  Listing Services, a split's requests also make an edge
  to the Service addressed, so `tulle stat svc/catalog` shows who calls `catalog` as its row
  counts them (`addressed`).
A failure is a request answered 5xx or not at all, or a gRPC call whose gRPC status was not OK
(a row's `failures + grpc_failures`, summed when a report is kept: `window.py`, ADR 0112).
Rates divide each proxy's requests by the time its reports in the window cover (for a proxy
that has stopped reporting, up to one interval ago: `_cover`), then add up across proxies;
latency quantiles come from the merged bucket counts (`quantiles.py`, error at most one
bucket); open TCP connections are each proxy's latest gauge, summed, while it still reports
(a Service addressed through a split: the connections of the backends its requests went to).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from tulle.controlplane.telemetry.quantiles import empty, merge, quantile
from tulle.controlplane.telemetry.window import Received, Row, StatsWindow
from tulle.proxyconfig.model import ProxyConfig

Snapshots = Callable[[tuple[str, str]], ProxyConfig | None]
"""The snapshot compiled for a workload (namespace, name), if any."""

STAT_API_VERSION = "stat.tulle.dev/v1"
SILENT_AFTER = 2.0
"""Report intervals without a report after which a proxy's connection gauges are stale (it
went: stopped, crashed, or lost its stream)."""
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

    def add(self, r: Row, cover: float) -> None:
        """One report row's counts; `cover`: the seconds its proxy's reports in the window
        cover (the rate is per proxy, then summed)."""
        self.requests += r.requests
        self.failures += r.failures
        self.rps += r.requests / cover
        merge(self.buckets, r.buckets)
        self.latency_sum_ms += r.latency_sum_ms

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


def aggregate(win: StatsWindow, window: float, members: Members | None = None, *,
              addressed: bool = False
              ) -> tuple[dict[tuple[Kind, str], Stat], dict[tuple[str, str], Stat]]:
    """Rows by (kind, `namespace/name`) and edges by (client workload, Service); one pass
    over each proxy's reports in the window.  `members`: who is behind each Service (its
    MESHED, where known); else the workloads whose sidecar names the Service as its own.
    `addressed`: edges to the Services a split's requests were addressed to as well."""
    rows: dict[tuple[Kind, str], Stat] = {}
    edges: dict[tuple[str, str], Stat] = {}
    now = win.clock()
    for reports in win.recent(window).values():
        cover, last = _cover(reports, now)
        # (client workload, backend Service) -> its open connections at the latest report;
        # (client workload, Service addressed) -> the backends its requests went to.
        backend_tcp: dict[tuple[str, str], int] = {}
        split_to: dict[tuple[str, str], set[str]] = {}
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
                    if rep is last and r.tcp_open:
                        key = (workload, service)
                        backend_tcp[key] = backend_tcp.get(key, 0) + r.tcp_open
                for s in targets:
                    s.add(r, cover)
                    if rep is last:  # open connections: the latest gauge
                        s.tcp_open += r.tcp_open
                if direction == "outbound" and parent and parent != service:
                    # Addressed to `parent`, split to `service`: the parent's requests, and
                    # (below) the connections that carried them, which the proxy counts
                    # under the backend (a pooled connection is not one parent's).
                    rows.setdefault(("Service", parent), Stat()).add(r, cover)
                    if addressed:
                        edges.setdefault((workload, parent), Stat()).add(r, cover)
                    split_to.setdefault((workload, parent), set()).add(service)
        for (workload, parent), backends in split_to.items():
            n = sum(backend_tcp.get((workload, b), 0) for b in backends)
            rows[("Service", parent)].tcp_open += n
            if addressed:
                edges[(workload, parent)].tcp_open += n
    if members is not None:
        reporting = {key for kind, key in rows if kind == "Workload"}
        services = [key for kind, key in rows if kind == "Service"]
        for svc, behind in members(services, reporting).items():
            # The endpoints are the better answer: a node agent's inbound rows name the
            # node's one Service for every workload it fronts.
            rows[("Service", svc)].meshed = behind & reporting
    return rows, edges


def _cover(reports: list[Received], now: float) -> tuple[float, Received | None]:
    """The seconds one proxy's `reports` (oldest first) speak for, and the report whose
    gauges are still current (None: the proxy has gone silent).

    From the start of the first report's interval to the last report, and on to one
    interval before `now` when the proxy has not reported since: the traffic of the last
    interval is still to come from a live proxy, but a proxy that stopped reporting (it
    stopped, crashed, or lost its stream) stopped carrying traffic, and its rate must fall
    over the window as a stopped client's does, not stay at what it last was.  A gap between
    reports (a restart) is time without traffic as well.  Its open connections are not
    counted once it has missed a whole report: they went with it."""
    first, last = reports[0], reports[-1]
    period = last.period
    end = max(last.at, now - period)
    cover = max(end - (first.at - first.interval), 1e-3)
    return cover, (last if now - last.at <= SILENT_AFTER * period else None)


def _ref(kind: str, key: str) -> dict[str, str]:
    ns, name = _split(key)
    return {"kind": kind, "namespace": ns, "name": name}


def stat_document(win: StatsWindow, window: float, kind: Kind, *, name: str | None = None,
                  namespace: str | None = None, window_text: str = "",
                  members: Members | None = None) -> dict[str, Any]:
    """The JSON document of `GET /api/v1/stat` (documented in docs/reference/stat.md)."""
    rows, edges = aggregate(win, window, members, addressed=kind == "Service")
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
