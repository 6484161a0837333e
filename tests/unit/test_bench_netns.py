"""The full-path benchmark's arithmetic: added latency is paired within a round, medians and
spread over rounds, the goal judged on the median; and its mesh is resources the API takes."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from bench.netns import TARGET_ADDED_P99_MS, summarize
from bench.netns_mesh import _resources

from tulle.api import parse


def _row(p50: float, p99: float, cpu: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"p50_ms": p50, "p99_ms": p99, "p999_ms": p99 * 2, "errors": 0,
                           "non2xx": 0, "timed_out": 0, "others_on_proxy_cpu": 0.1,
                           "load_cpu_busy": 0.2}
    if cpu is not None:
        row["cpu_us_per_req"] = cpu
    return row


def test_added_latency_is_paired_per_round_then_the_median_and_spread() -> None:
    rounds = [
        {"none": _row(0.1, 1.0), "sidecar": _row(0.5, 1.2, 300), "agent": _row(0.4, 5.0, 280)},
        # A noisy round moves every path: the pairing keeps the added figure steady.
        {"none": _row(0.2, 3.0), "sidecar": _row(0.6, 3.25, 310), "agent": _row(0.5, 7.0, 290)},
        {"none": _row(0.1, 1.1), "sidecar": _row(0.5, 1.4, 305), "agent": _row(0.4, 5.1, 285)},
    ]
    out = summarize(rounds)
    assert out["sidecar"]["added_p99_ms"] == {"median": 0.25, "min": 0.2, "max": 0.3}
    assert out["sidecar"]["added_p50_ms"]["median"] == 0.4
    assert out["agent"]["added_p99_ms"]["median"] == 4.0
    assert out["sidecar"]["cpu_us_per_req"] == {"median": 305, "min": 300, "max": 310}
    assert "added_p99_ms" not in out["none"] and "cpu_us_per_req" not in out["none"]
    assert out["targets"]["sidecar_added_p99_ms"] == {
        "goal": TARGET_ADDED_P99_MS, "median": 0.25, "met": True}
    assert out["targets"]["agent_added_p99_ms"]["met"] is False


def test_the_benchmark_mesh_is_valid_resources() -> None:
    kinds = [parse(r).kind for r in _resources()]
    assert kinds.count("Workload") == 4 and kinds.count("Service") == 2


def test_without_namespaces_the_run_is_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.netns as netns_bench

    monkeypatch.setattr(netns_bench, "missing_requirements", lambda: "network namespaces need root")
    args = argparse.Namespace(rate=1000.0, duration=1.0, warmup=0.1, connections=1, rounds=1,
                              nice=0)
    got = netns_bench.run(args)
    assert got["skipped"] == "network namespaces need root" and "none" not in got
