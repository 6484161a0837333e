"""What a proxy reports of its traffic for `tulle stat`: compact per-interval summaries.

Why here, next to the contract: both ends speak it (the proxy builds `StatsRow`s from its
metrics, the control plane merges them) and the data plane must not import the control plane.
Why summaries on the proxy stream and not scrapes of the admin /metrics: the stream already
crosses hosts over TLS (ADR 0034) while the admin listener stays on loopback; no new door is
opened (ADR 0046).

A row is what one proxy saw of one *edge* in one interval: a direction, the local workload,
the peer Service (the destination Service of outbound traffic; the local workload's own Service
inbound).  Counts are deltas over the interval, never totals, so the control plane sums rows
from many proxies and many intervals without knowing about restarts.  Latency travels as the
counts of the proxy's own duration buckets (`DURATION_BUCKETS_MS`, Istio's boundaries), sparse
as `[index, count]` pairs: bucket counts add across proxies exactly, so a merged p99 is the
p99 of everyone's requests with the error of one bucket, the same answer Prometheus'
`histogram_quantile` gives over the same metrics.
"""

from __future__ import annotations

from typing import Literal

import msgspec

DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)
"""Upper bounds (milliseconds) of the proxy's duration buckets, Istio's
`request_duration_milliseconds` boundaries, plus one overflow bucket.  A report's bucket
indexes refer to these: changing them is a new meaning, hence a new feature."""

STATS_MIN_INTERVAL_MS = 200
STATS_MAX_INTERVAL_MS = 300_000


def report_seconds(interval_ms: int) -> float:
    """Seconds between the reports a `StatsRequest` of `interval_ms` asks for, clamped to the
    contract's bounds: the proxy reports at this period, and the control plane expects the
    next report after it."""
    return min(max(interval_ms, STATS_MIN_INTERVAL_MS), STATS_MAX_INTERVAL_MS) / 1000


MAX_STATS_ROWS = 2_000
"""Rows one report may carry (a proxy with more edges sends the busiest); the control plane
refuses a report with more."""


class StatsRow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    direction: Literal["inbound", "outbound"]
    workload: str
    """`namespace/name` of the local workload (on a node agent, the one the listener serves)."""
    service: str = ""
    """`namespace/name` of the peer Service: outbound, the destination; inbound, the local
    workload's own Service (empty when it has none)."""
    requests: int = 0
    failures: int = 0
    """Of `requests`, those answered 5xx or not answered at all (status 0: a reset, a connect
    failure, a client that left first)."""
    grpc_failures: int = 0
    """Of `requests`, the gRPC calls not in `failures` whose gRPC status was not OK (0): the
    status the golden metrics count them under (`telemetry/grpc_status.call_status`: the
    `grpc-status` the caller got, else CANCELLED for a caller that left, else INTERNAL for a
    200 without one, else gRPC's mapping of the HTTP status).  A row's failures are
    `failures + grpc_failures` (ADR 0112).  Omitted when 0: a control plane from before it
    ignores the field and counts those calls as successes, as before; a proxy from before it
    sends none, and its failed gRPC calls count as successes."""
    buckets: list[tuple[int, int]] = msgspec.field(default_factory=list)
    """Duration histogram deltas: `[bucket index, count]`, index into `DURATION_BUCKETS_MS`
    plus one overflow bucket; only non-zero buckets."""
    latency_sum_ms: float = 0.0
    tcp_open: int = 0
    """Connections open at the end of the interval (a gauge, not a delta): inbound, downstream
    connections of the workload's listeners; outbound, upstream connections to the Service."""
    parent: str = ""
    """Outbound: `namespace/name` of the Service these requests were addressed to when it is
    not `service` (a route of `parent` sent them to `service`'s backends: a canary split).
    The same requests then count for both Services (ADR 0059).  An older control plane
    ignores the field and counts them for `service` alone, as before."""


__all__ = ["DURATION_BUCKETS_MS", "MAX_STATS_ROWS", "STATS_MAX_INTERVAL_MS", "STATS_MIN_INTERVAL_MS",
           "StatsRow"]
