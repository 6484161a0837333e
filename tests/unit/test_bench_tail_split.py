"""`bench.tail_split.split`: which requests had the path to themselves."""

from __future__ import annotations

from bench.tail_split import split


def test_requests_that_overlap_any_other_are_told_apart_from_those_alone() -> None:
    spans = [
        (0.000, 0.001, 0.001),  # alone
        (0.010, 0.013, 0.003),  # overlaps the next (sent before this one is answered)
        (0.012, 0.014, 0.002),  # overlaps the previous
        (0.020, 0.021, 0.001),  # alone again: everything before was answered
        (0.030, 0.040, 0.010),  # a long one that a later, short one overlaps
        (0.031, 0.032, 0.001),
    ]
    out = split(list(reversed(spans)))  # the order they finished in does not matter
    assert out["overlapped_share"] == round(4 / 6, 3)
    assert out["alone"] == {"p50": 1.0, "p99": 1.0, "n": 2}
    assert out["overlapped"]["n"] == 4
    assert out["overlapped"]["p99"] == 10.0
    assert out["all"]["n"] == 6


def test_no_requests_gives_empty_figures() -> None:
    assert split([]) == {"overlapped_share": 0.0, "alone": {}, "overlapped": {}, "all": {}}
