"""The series the request path bumps: a counter's and a histogram's child (compiled).

Why a module of their own: `telemetry/metrics.py` (families, registry, exposition) is read a
few times a minute; these two classes are written on every request, by the compiled request
path (bytes counters) and the golden metrics (a counter and three histograms per request).
Compiled with them (`tulle.native.COMPILED`, ADR 0062), an update is a field store instead of
a generic attribute lookup; `metrics.py` re-exports both, so nothing else changes.
"""

from __future__ import annotations


def bucket(bounds: tuple[float, ...], v: float) -> int:
    """`bisect.bisect_left(bounds, v)`: the index of the first bound >= `v` (`bounds`
    ascending).  Compiled, its comparisons are of C doubles, where `bisect` compares Python
    objects (an int with a float, for byte counts); three of these run per request (ADR 0066).
    A scan from the smallest bound, not a bisection: a request's duration and sizes fall in
    the first few buckets (a sub-millisecond duration in the first, an empty body in the
    first, a 1 KiB response in the fifth), and each step of a compiled bisection costs a
    tuple read, an unboxing and index arithmetic (~100 instructions), so the scan does the
    three of a request in ~400 instructions where the bisection took ~1,600 (callgrind)."""
    i = 0
    for b in bounds:
        if not b < v:  # (bisect's own test: a NaN lands at 0, as there)
            return i
        i += 1
    return i


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
