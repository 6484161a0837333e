"""The request metrics of one (listener, cluster) pair, counted once per request.

Compiled with the hot path (`tulle.native.COMPILED`): `RequestStats.count` runs for every
request, and was the last interpreted code on a plain request's path (ADR 0065).  Re-exported
by `listeners/context.py`, which builds them.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from tulle.dataplane.telemetry.grpc_status import call_status
from tulle.dataplane.telemetry.series import CounterChild, HistogramChild

if TYPE_CHECKING:
    from tulle.dataplane.telemetry.addressed import AddressedSeries
    from tulle.dataplane.telemetry.golden import HttpGolden
    from tulle.dataplane.telemetry.metrics import ProxyMetrics


@mypyc_attr(allow_interpreted_subclasses=True)  # tests record counts (ADR 0052)
class RequestStats:
    """Metric children for one (listener, cluster) pair, resolved on first use.

    `count` is on every request's path: a flagless response (the common case) costs one dict
    lookup by status code and the histogram's bisect; other combinations one tuple-keyed
    lookup more."""

    __slots__ = ("_bounds", "_buckets", "_by_status", "_codes", "_family", "_grpc_failed",
                 "_labels", "duration", "golden")

    def __init__(self, metrics: ProxyMetrics, listener: str, cluster: str,
                 golden: HttpGolden | None = None) -> None:
        self._family = metrics.requests
        self._labels = (listener, cluster)
        self._codes: dict[tuple[int, str], CounterChild] = {}
        self._by_status: dict[int, CounterChild] = {}
        """The `_codes` children without a response flag, by status alone."""
        self.duration: HistogramChild = metrics.duration.labels(listener, cluster)
        self._bounds = self.duration.bounds
        self._buckets = self.duration.counts
        self.golden = golden
        """The golden metrics' recorder for these requests (`telemetry/golden.py`); None when
        the snapshot has no `telemetry.metrics`."""
        self._grpc_failed: dict[tuple[str, str], CounterChild] = metrics.grpc_failed
        """The proxy's gRPC failures by (listener, cluster) (`count_grpc`)."""

    def count(self, status: int, flags: str, duration_ms: float) -> None:
        child = None if flags else self._by_status.get(status)
        if child is None:
            child = self._child(status, flags)
        child.value += 1
        d = self.duration  # HistogramChild.observe, inlined: this runs once per request
        self._buckets[bisect_left(self._bounds, duration_ms)] += 1
        d.sum += duration_ms
        d.count += 1

    def count_grpc(self, status: int, flags: str, grpc_status: str) -> bool:
        """A gRPC call ended (called for gRPC calls only, after `count`, by the HTTP/2 stream:
        a plain request never comes here).  One whose HTTP status already makes it a failure
        (5xx, none) is one; otherwise it fails when its gRPC status is not OK, by the rule
        of the golden metrics (`call_status`): counted in `grpc_failed` for `tulle stat`
        (ADR 0112).  Returns whether it was."""
        if status >= 500 or status < 100 or call_status(grpc_status, status, flags) == "0":
            return False
        failed = self._grpc_failed
        key = self._labels
        child = failed.get(key)
        if child is None:
            child = failed[key] = CounterChild()
        child.value += 1
        return True

    def _child(self, status: int, flags: str) -> CounterChild:
        child = self._codes.get((status, flags))
        if child is None:
            child = self._codes[(status, flags)] = self._family.labels(
                *self._labels, str(status), flags or "-")
            if not flags:
                self._by_status[status] = child
        return child


class AddressedStats(RequestStats):
    """The stats of requests a route addressed to one Service sent to another Service's
    cluster: counted as the cluster's (the same children) and in the addressed Service's
    series (`telemetry/addressed.py`) too.  Only such routes pay the second count."""

    __slots__ = ("addressed",)

    def __init__(self, base: RequestStats, addressed: AddressedSeries) -> None:
        # the same children as `base` (its dicts shared: a child made by either is the other's)
        self._family = base._family
        self._labels = base._labels
        self._codes = base._codes
        self._by_status = base._by_status
        self.duration = base.duration
        self._bounds = base._bounds
        self._buckets = base._buckets
        self.golden = base.golden
        self._grpc_failed = base._grpc_failed
        self.addressed = addressed

    def count(self, status: int, flags: str, duration_ms: float) -> None:
        RequestStats.count(self, status, flags, duration_ms)
        self.addressed.count(status, duration_ms)

    def count_grpc(self, status: int, flags: str, grpc_status: str) -> bool:
        if not RequestStats.count_grpc(self, status, flags, grpc_status):
            return False
        self.addressed.grpc_failures += 1
        return True
