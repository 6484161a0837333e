"""The request metrics of one (listener, cluster) pair, counted once per request.

Compiled with the hot path (`tulle.native.COMPILED`): `RequestStats.count` runs for every
request, and was the last interpreted code on a plain request's path (ADR 0065).  Re-exported
by `listeners/context.py`, which builds them.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

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

    __slots__ = ("_bounds", "_buckets", "_by_status", "_codes", "_family", "_labels", "duration",
                 "golden")

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

    def count(self, status: int, flags: str, duration_ms: float) -> None:
        child = None if flags else self._by_status.get(status)
        if child is None:
            child = self._child(status, flags)
        child.value += 1
        d = self.duration  # HistogramChild.observe, inlined: this runs once per request
        self._buckets[bisect_left(self._bounds, duration_ms)] += 1
        d.sum += duration_ms
        d.count += 1

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
        self.addressed = addressed

    def count(self, status: int, flags: str, duration_ms: float) -> None:
        RequestStats.count(self, status, flags, duration_ms)
        self.addressed.count(status, duration_ms)
