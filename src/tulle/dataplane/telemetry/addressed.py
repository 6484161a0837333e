"""Requests counted under the Service they were addressed to, when a route sent them to another
Service's backends (a canary split of `catalog` to `catalog-v1` / `catalog-v2`).

Why apart from the metric families: `tulle_proxy_requests_total` and the duration histogram are
by listener and cluster, and a cluster is one backend Service; what a client addressed (the
route's parent, its virtual host's `service`) is not in their labels, and adding a label would
change every series the proxy exposes.  These series exist only for (listener, cluster,
addressed Service) triples where the two Services differ, are counted only by those routes'
requests (`listeners/context.AddressedStats`), are never exposed on /metrics, and are read by
the stats summary (`summary.py`, ADR 0059), which reports them as rows with a `parent`.
"""

from __future__ import annotations

from bisect import bisect_left

from tulle.proxyconfig.stats import DURATION_BUCKETS_MS


class AddressedSeries:
    """One (listener, cluster, addressed Service): the subset of that (listener, cluster)'s
    requests that were addressed to the Service, counted as the summary counts them."""

    __slots__ = ("counts", "failures", "grpc_failures", "requests", "sum")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        """5xx, or no response at all (status 0): the summary's failures."""
        self.grpc_failures = 0
        """gRPC calls not in `failures` whose gRPC status was not OK (`count_grpc` of
        `listeners/request_stats.AddressedStats`, ADR 0112)."""
        self.counts = [0] * (len(DURATION_BUCKETS_MS) + 1)
        """Duration bucket counts, the same boundaries as the duration histogram."""
        self.sum = 0.0

    def count(self, status: int, duration_ms: float) -> None:
        self.requests += 1
        if status >= 500 or status < 100:
            self.failures += 1
        self.counts[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
        self.sum += duration_ms


class Addressed:
    """The proxy's addressed series, by (listener, cluster, Service); grows only with the
    config's routes (one series per route backend whose Service differs from its parent)."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[tuple[str, str, str], AddressedSeries] = {}

    def series(self, listener: str, cluster: str, service: str) -> AddressedSeries:
        key = (listener, cluster, service)
        s = self.children.get(key)
        if s is None:
            s = self.children[key] = AddressedSeries()
        return s


__all__ = ["Addressed", "AddressedSeries"]
