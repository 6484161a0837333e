"""The series the request path bumps: a counter's and a histogram's child (compiled).

Why a module of their own: `telemetry/metrics.py` (families, registry, exposition) is read a
few times a minute; these two classes are written on every request, by the compiled request
path (bytes counters) and the golden metrics (a counter and three histograms per request).
Compiled with them (`tulle.native.COMPILED`, ADR 0062), an update is a field store instead of
a generic attribute lookup; `metrics.py` re-exports both, so nothing else changes.
"""

from __future__ import annotations


def bucket(bounds: tuple[float, ...], v: float) -> int:
    """`bisect.bisect_left(bounds, v)`: the index of the first bound >= `v`.  Compiled, its
    comparisons are of C doubles, where `bisect` compares Python objects (an int with a float,
    for byte counts); three of these run per request (ADR 0066)."""
    lo = 0
    hi = len(bounds)
    while lo < hi:
        mid = (lo + hi) >> 1
        if bounds[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class HistogramChild:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bucket(self.bounds, v)] += 1
        self.sum += v
        self.count += 1


__all__ = ["CounterChild", "HistogramChild", "bucket"]
