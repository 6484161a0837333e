"""Histogram merge and quantiles: exact merge, and the stated error (within the true
quantile's bucket, so at most that bucket's width)."""

from __future__ import annotations

import bisect
import random

import pytest

from tulle.controlplane.telemetry.quantiles import empty, merge, quantile
from tulle.dataplane.telemetry.metrics import DURATION_BUCKETS_MS, HistogramChild


def _bucket_of(v: float) -> tuple[float, float]:
    i = bisect.bisect_left(DURATION_BUCKETS_MS, v)
    lo = DURATION_BUCKETS_MS[i - 1] if i > 0 else 0.0
    return lo, DURATION_BUCKETS_MS[min(i, len(DURATION_BUCKETS_MS) - 1)]


def _sparse(h: HistogramChild) -> list[tuple[int, int]]:
    return [(i, c) for i, c in enumerate(h.counts) if c]


def test_merge_of_two_proxies_equals_one_histogram_of_all_samples() -> None:
    rng = random.Random(7)
    a, b, both = (HistogramChild(DURATION_BUCKETS_MS) for _ in range(3))
    for h in (a, b):
        for _ in range(500):
            v = rng.expovariate(1 / 20)
            h.observe(v)
            both.observe(v)
    merged = empty()
    merge(merged, _sparse(a))
    merge(merged, _sparse(b))
    assert merged == both.counts


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_quantile_lies_in_the_true_quantiles_bucket(seed: int, q: float) -> None:
    rng = random.Random(seed)
    samples = [rng.lognormvariate(2.0, 1.0) for _ in range(2000)]
    h = HistogramChild(DURATION_BUCKETS_MS)
    for v in samples:
        h.observe(v)
    true = sorted(samples)[int(q * len(samples)) - 1]
    lo, hi = _bucket_of(true)
    got = quantile(h.counts, q)
    assert got is not None
    assert lo <= got <= hi, (true, got, lo, hi)
    assert abs(got - true) <= hi - lo


def test_interpolates_inside_a_bucket_like_histogram_quantile() -> None:
    counts = empty()
    counts[3] = 10  # (5, 10] ms
    assert quantile(counts, 0.5) == pytest.approx(7.5)
    assert quantile(counts, 0.99) == pytest.approx(9.95)


def test_edges() -> None:
    assert quantile(empty(), 0.5) is None
    over = empty()
    over[-1] = 3  # beyond the last bound: the highest finite bound answers
    assert quantile(over, 0.5) == DURATION_BUCKETS_MS[-1]
    counts = empty()
    merge(counts, [(-1, 5), (999, 5), (0, -3), (0, 2)])  # hostile indexes and counts ignored
    assert counts[0] == 2 and sum(counts) == 2
