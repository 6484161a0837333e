"""Traffic summaries for the control plane (`tulle stat`, ADR 0046), built from the metrics.

Why from the registry and not from the request path: the counters and duration histograms the
proxy keeps for /metrics already hold everything `tulle stat` shows, so a summary costs the
hot path nothing.  Every interval `Summarizer.report()` walks the children of four families,
subtracts what it saw last time and groups the deltas by edge (direction, local workload, peer
Service), which the listener and cluster names of the config in force resolve.  Its cost grows
with the number of series, not with traffic.

A gRPC call fails with HTTP 200, which the request metric's status cannot tell: the HTTP/2
stream counts the failed calls apart, by (listener, cluster), when a gRPC call ends
(`metrics.grpc_failed`, `RequestStats.count_grpc`), and a row carries them as `grpc_failures`
(ADR 0112).

Requests a route addressed to one Service and sent to another Service's backends (a canary
split) are also counted apart, by the Service addressed (`addressed.py`): their share of an
edge's counts is moved to a row of its own whose `parent` names that Service (ADR 0059), so the
control plane counts them under both Services and nothing twice under one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tulle.dataplane.telemetry.metrics import CounterChild, GaugeChild, HistogramChild, ProxyMetrics
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stats import MAX_STATS_ROWS, StatsRow

K = TypeVar("K")

RowKey = tuple[str, str, str, str]
"""(direction, workload, service, parent)."""


@dataclass(slots=True)
class _Acc:
    requests: int = 0
    failures: int = 0
    grpc_failures: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    latency_sum_ms: float = 0.0
    tcp_open: int = 0


def _grown(children: Mapping[K, object], seen: dict[K, int]) -> Iterator[tuple[K, int]]:
    """Each counter of `children` that grew since `seen` last recorded it, with how much;
    `seen` is brought up to date."""
    for key, child in children.items():
        assert isinstance(child, CounterChild)
        delta = child.value - seen.get(key, 0)
        if delta > 0:
            seen[key] = child.value
            yield key, delta


def _failed(code: str) -> bool:
    """5xx, or no response at all (a reset or a connect failure counted with status 0)."""
    try:
        status = int(code)
    except ValueError:
        return True
    return status >= 500 or status < 100


class Summarizer:
    """Remembers the counters it reported last and answers the deltas since then."""

    __slots__ = ("_addressed", "_grpc", "_hist", "_metrics", "_requests")

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics
        self._requests: dict[tuple[str, ...], int] = {}
        self._hist: dict[tuple[str, ...], tuple[list[int], float]] = {}
        self._addressed: dict[tuple[str, str, str],
                              tuple[int, int, int, list[int], float]] = {}
        self._grpc: dict[tuple[str, str], int] = {}

    def report(self, cfg: ProxyConfig | None) -> list[StatsRow]:
        """The rows since the previous call.  Series of listeners or clusters the config does
        not name (gone in a swap) are still consumed, so they are not reported twice."""
        local = f"{cfg.node.namespace}/{cfg.node.name}" if cfg else ""
        own_service = (f"{cfg.node.namespace}/{cfg.node.service}"
                       if cfg and cfg.node.service else "")
        listeners: dict[str, tuple[str, str]] = {}
        services: dict[str, str] = {}
        if cfg is not None:
            for lst in cfg.listeners:
                listeners[lst.name] = (lst.direction, lst.workload or local)
            for c in cfg.clusters:
                md = c.metadata
                if md is not None and md.service:
                    services[c.name] = f"{md.namespace or cfg.node.namespace}/{md.service}"
        acc: dict[RowKey, _Acc] = {}

        def row(listener: str, cluster: str, parent: str = "") -> _Acc | None:
            where = listeners.get(listener)
            if where is None:
                return None
            direction, workload = where
            svc = own_service if direction == "inbound" else services.get(cluster, "")
            if direction == "outbound" and not svc:
                return None  # passthrough and unnamed clusters: no Service to show them under
            key = (direction, workload, svc, parent if parent != svc else "")
            a = acc.get(key)
            if a is None:
                a = acc[key] = _Acc()
            return a

        m = self._metrics
        for labels, delta in _grown(m.requests.children, self._requests):
            a = row(labels[0], labels[1])
            if a is not None:
                a.requests += delta
                if _failed(labels[2]):
                    a.failures += delta
        for key, delta in _grown(m.grpc_failed, self._grpc):
            a = row(key[0], key[1])
            if a is not None:
                a.grpc_failures += delta
        hist = self._hist
        for labels, h in m.duration.children.items():
            assert isinstance(h, HistogramChild)
            before = hist.get(labels)
            if before is not None and before[0] == h.counts:
                continue
            old = before[0] if before is not None else [0] * len(h.counts)
            hist[labels] = (list(h.counts), h.sum)
            a = row(labels[0], labels[1])
            if a is None:
                continue
            for i, (now_n, old_n) in enumerate(zip(h.counts, old, strict=True)):
                if now_n != old_n:
                    a.buckets[i] = a.buckets.get(i, 0) + now_n - old_n
            a.latency_sum_ms += h.sum - (before[1] if before is not None else 0.0)
        for (listener,), g in m.connections_active.children.items():
            assert isinstance(g, GaugeChild)
            where = listeners.get(listener)
            if g.value and where is not None and where[0] == "inbound":
                a = row(listener, "")
                if a is not None:
                    a.tcp_open += int(g.value)
        self._move_addressed(row)
        outbound = next((n for n, (d, _) in listeners.items() if d == "outbound"), "")
        for (cluster,), g in m.upstream_connections_active.children.items():
            assert isinstance(g, GaugeChild)
            if g.value and outbound and cluster in services:
                a = row(outbound, cluster)
                if a is not None:
                    a.tcp_open += int(g.value)
        rows = [StatsRow(direction=k[0], workload=k[1], service=k[2],  # type: ignore[arg-type]
                         parent=k[3], requests=a.requests, failures=a.failures,
                         # (never more than the row's other requests: counted together)
                         grpc_failures=min(a.grpc_failures, a.requests - a.failures),
                         buckets=sorted(a.buckets.items()),
                         latency_sum_ms=round(a.latency_sum_ms, 3), tcp_open=a.tcp_open)
                for k, a in acc.items() if a.requests or a.tcp_open]
        if len(rows) > MAX_STATS_ROWS:
            rows.sort(key=lambda r: (-r.requests, -r.tcp_open))
            del rows[MAX_STATS_ROWS:]
        return rows

    def _move_addressed(self, row: Callable[[str, str, str], _Acc | None]) -> None:
        """Move each addressed series' deltas from its edge's row to the row with its
        `parent` (the deltas are a subset of the edge's, read in the same pass)."""
        seen = self._addressed
        for key, s in self._metrics.addressed.children.items():
            before = seen.get(key)
            if before is not None and before[0] == s.requests:
                continue
            r0, f0, g0, c0, s0 = (before if before is not None
                                  else (0, 0, 0, [0] * len(s.counts), 0.0))
            seen[key] = (s.requests, s.failures, s.grpc_failures, list(s.counts), s.sum)
            listener, cluster, parent = key
            base = row(listener, cluster, "")
            moved = row(listener, cluster, parent)
            if base is None or moved is None or base is moved:
                continue
            n, f, ms = s.requests - r0, s.failures - f0, s.sum - s0
            n = min(n, base.requests)  # (never more than the edge has: a consistent read)
            f = min(f, base.failures, n)
            g = min(s.grpc_failures - g0, base.grpc_failures, n - f)
            base.requests -= n
            base.failures -= f
            base.grpc_failures -= g
            moved.requests += n
            moved.failures += f
            moved.grpc_failures += g
            for i, (now_n, old_n) in enumerate(zip(s.counts, c0, strict=True)):
                d = min(now_n - old_n, base.buckets.get(i, 0))
                if d > 0:
                    base.buckets[i] -= d
                    if not base.buckets[i]:
                        del base.buckets[i]
                    moved.buckets[i] = moved.buckets.get(i, 0) + d
            ms = min(ms, base.latency_sum_ms)
            base.latency_sum_ms -= ms
            moved.latency_sum_ms += ms


__all__ = ["Summarizer"]
