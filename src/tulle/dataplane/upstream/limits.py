"""Per-cluster limits (Envoy's circuit breakers): the first step below the router.

Why here, counted per cluster and not per pool: a limit protects the upstream *service*, so the
requests, pending requests, connections and retries of every endpoint's pool count together.
The counters live in one `Limits` object per cluster name that a swap carries over
(`ClusterManager`), so what is in flight when the config changes keeps counting against the
new thresholds, and every decrement lands on the object its increment did.

Who counts what (each pairs its increment with exactly one decrement):

* `requests`: the attempt layer (`attempt.py`), from open to the attempt's end;
* `retries`: the attempt layer, for an attempt opened as a retry, until it ends;
* `pending`: the pools, while a request waits for a connection (dialled or freed);
* `connections`: the pools, from the dial's start until the connection is lost.

A request past `requests`, `pending` or `retries` fails at once with 503 `UO`
(`overflow_error`); a connection past `connections` is simply not dialled (the request waits,
Envoy's `upstream_cx_overflow`).  Every overflow is counted by limit.
"""

from __future__ import annotations

from time import monotonic
from typing import Final

from tulle.dataplane.exchange import UpstreamError
from tulle.dataplane.telemetry.metrics import Counter, ProxyMetrics
from tulle.dataplane.upstream.budget import Budget
from tulle.proxyconfig.model import ClusterLimits

DEFAULTS: Final = ClusterLimits()


class Limits:
    """The counters and thresholds of one cluster."""

    __slots__ = ("budget", "connections", "m_overflow", "max_connections", "max_pending", "max_requests",
                 "max_retries", "name", "pending", "requests", "retries")

    def __init__(self, name: str, cfg: ClusterLimits | None, metrics: ProxyMetrics) -> None:
        self.name = name
        self.requests = 0
        self.pending = 0
        self.connections = 0
        self.retries = 0
        self.max_requests = self.max_pending = self.max_connections = self.max_retries = 0
        self.configure(cfg)
        self.budget = Budget(None, monotonic)
        """The cluster's retry budget (`budget.py`): carried over with the counters; its
        parameters are set at commit (`ClusterRuntime`, `ClusterManager.commit`)."""
        self.m_overflow: Counter = metrics.upstream_overflow
        """Children are made at the first overflow: a thousand clusters that never overflow
        add nothing to /metrics."""

    def configure(self, cfg: ClusterLimits | None) -> None:
        """Take new thresholds (at a swap's commit); the counts carry on."""
        c = cfg if cfg is not None else DEFAULTS
        self.max_requests = c.max_requests
        self.max_pending = c.max_pending_requests
        self.max_connections = c.max_connections
        self.max_retries = c.max_retries

    def can_connect(self) -> bool:
        """Whether one more connection may be dialled (counted as overflow when not)."""
        if self.connections < self.max_connections:
            return True
        self.m_overflow.labels(self.name, "connections").value += 1
        return False

    def overflow(self, limit: str) -> UpstreamError:
        """Count an overflow of `limit` (requests, pending, retries) and return the error the
        request fails with."""
        self.m_overflow.labels(self.name, limit).value += 1
        n = {"requests": self.max_requests, "pending": self.max_pending,
             "retries": self.max_retries}[limit]
        return overflow_error(f"cluster '{self.name}' is at its limit of {n} {limit}"
                              f" (clusters[].limits)")


def overflow_error(detail: str) -> UpstreamError:
    """503 UO: a limit refused the request before anything was sent."""
    return UpstreamError(503, "UO", detail, retry_safe=True)
