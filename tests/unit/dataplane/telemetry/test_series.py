"""The compiled histogram bucket search gives `bisect_left`'s index (ADR 0066)."""

from __future__ import annotations

import bisect
import random

from tulle.dataplane.telemetry.golden import BYTES_BUCKETS
from tulle.dataplane.telemetry.series import HistogramChild, bucket
from tulle.proxyconfig.stats import DURATION_BUCKETS_MS


def test_bucket_is_bisect_left_on_the_golden_bounds() -> None:
    rng = random.Random(66)
    for bounds in (DURATION_BUCKETS_MS, BYTES_BUCKETS, (1.0,), ()):
        values: list[float] = [0.0, -1.0, 1e18, float("nan"), float("inf"), *bounds,
                               *(b - 1e-9 for b in bounds), *(b + 1e-9 for b in bounds)]
        values += [rng.random() * rng.choice((1.0, 100.0, 1e4, 1e7)) for _ in range(20_000)]
        values += [float(rng.randrange(0, 20_000_000)) for _ in range(5_000)]
        for v in values:
            assert bucket(bounds, v) == bisect.bisect_left(bounds, v), (bounds, v)


def test_a_histogram_counts_a_bound_in_its_own_bucket() -> None:
    h = HistogramChild((1.0, 10.0))
    for v in (0.5, 1.0, 1.5, 10.0, 11.0):
        h.observe(v)
    assert h.counts == [2, 2, 1]
    assert h.count == 5 and h.sum == 24.0
