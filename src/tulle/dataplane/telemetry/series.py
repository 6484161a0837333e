"""The series the request path bumps: a counter's and a histogram's child (compiled).

Why a module of their own: `telemetry/metrics.py` (families, registry, exposition) is read a
few times a minute; these two classes are written on every request, by the compiled request
path (bytes counters) and the golden metrics (a counter and three histograms per request).
Compiled with them (`tulle.native.COMPILED`, ADR 0062), an update is a field store instead of
a generic attribute lookup; `metrics.py` re-exports both, so nothing else changes.
"""

from __future__ import annotations

import bisect


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
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1


__all__ = ["CounterChild", "HistogramChild"]
