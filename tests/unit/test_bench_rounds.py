"""The benchmark's figures are medians of rounds with their spread, never the best round
(issue 13 item 4): `bench.measure.with_spread`, `bench.verdicts._ratios`, `bench.report._cell`."""

from __future__ import annotations

from bench.measure import with_spread
from bench.report import _cell
from bench.verdicts import _ratios


def test_a_figure_is_the_median_of_its_rounds_with_min_and_max() -> None:
    rounds = [{"cpu_us_per_req_sat": 30.0, "rps_max": 9000.0},
              {"cpu_us_per_req_sat": 24.0, "rps_max": 15000.0},
              {"cpu_us_per_req_sat": 25.0, "rps_max": 12000.0}]
    out = with_spread({}, rounds)
    assert out["cpu_us_per_req_sat"] == 25.0  # not the best round (24.0)
    assert out["cpu_us_per_req_sat_range"] == [24.0, 30.0]
    assert out["cpu_us_per_req_sat_by_round"] == [30.0, 24.0, 25.0]
    assert out["rps_max"] == 12000  # not the best round (15,000)
    assert out["rps_max_range"] == [9000, 15000]


def test_a_figure_missing_from_a_round_is_not_summarised() -> None:
    out = with_spread({}, [{"p99_ms": 1.0}, {}])
    assert "p99_ms" not in out


def test_ratios_are_medians_of_the_per_round_ratios() -> None:
    tulle = {"cpu_us_per_req_sat": 25.0, "cpu_us_per_req_sat_by_round": [30.0, 24.0, 25.0]}
    haproxy = {"cpu_us_per_req_sat": 12.0, "cpu_us_per_req_sat_by_round": [10.0, 12.0, 30.0]}
    # per round 3.0, 2.0, 0.83: the median is 2.0, where the ratio of the medians says 2.08
    assert _ratios(tulle, haproxy, ("cpu_us_per_req_sat",)) == {"cpu_us_per_req_sat": 2.0}


def test_without_rounds_the_ratio_is_of_the_figures() -> None:
    assert _ratios({"rss_mb": 33.0}, {"rss_mb": 15.0}, ("rss_mb",)) == {"rss_mb": 2.2}


def test_a_cell_shows_the_spread() -> None:
    assert _cell({"cpu_us_per_req_sat": 25.0, "cpu_us_per_req_sat_range": [24.0, 30.0]},
                 "cpu_us_per_req_sat") == "25.0 (24.0-30.0)"
    assert _cell({"rss_mb": 33.0}, "rss_mb") == "33.0"
