"""Cluster limits: thresholds from the contract (Envoy's defaults when absent), overflow errors
that say which limit, and metric series that exist only once something overflowed."""

from __future__ import annotations

from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.limits import Limits
from tulle.proxyconfig.model import ClusterLimits


def overflow_series(m: ProxyMetrics) -> dict[tuple[str, ...], int]:
    return {k: c.value for k, c in m.upstream_overflow.children.items()}  # type: ignore[attr-defined]


def test_defaults_are_envoys_and_configure_keeps_the_counts() -> None:
    m = ProxyMetrics()
    lim = Limits("web", None, m)
    assert (lim.max_connections, lim.max_pending, lim.max_requests, lim.max_retries) == \
        (1024, 1024, 1024, 3)
    lim.requests = 5
    lim.configure(ClusterLimits(max_requests=2, max_retries=0))
    assert (lim.max_requests, lim.max_retries, lim.requests) == (2, 0, 5)
    assert overflow_series(m) == {}  # nothing overflowed: no series at all


def test_overflow_is_a_retry_safe_503_uo_naming_the_limit_and_counted() -> None:
    m = ProxyMetrics()
    lim = Limits("web", ClusterLimits(max_pending_requests=0), m)
    err = lim.overflow("pending")
    assert (err.status, err.flag, err.retry_safe) == (503, "UO", True)
    assert "limit of 0 pending" in err.detail and "'web'" in err.detail
    lim.overflow("requests")
    lim.overflow("requests")
    assert overflow_series(m) == {("web", "pending"): 1, ("web", "requests"): 2}


def test_a_connection_past_the_limit_is_refused_and_counted_not_failed() -> None:
    m = ProxyMetrics()
    lim = Limits("web", ClusterLimits(max_connections=1), m)
    assert lim.can_connect()
    lim.connections = 1
    assert not lim.can_connect()
    assert overflow_series(m) == {("web", "connections"): 1}
