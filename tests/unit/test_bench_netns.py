"""The full-path benchmark's arithmetic: added latency is paired within a round, medians and
spread over rounds, the goal judged on the median; and its mesh is resources the API takes."""

from __future__ import annotations

import argparse
from pathlib import Path
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
        {"none": _row(0.1, 1.0), "sidecar": _row(0.5, 1.2, 300), "agent": _row(0.4, 5.0, 280),
         "haproxy": _row(0.3, 1.1, 100)},
        # A noisy round moves every path: the pairing keeps the added figure steady.
        {"none": _row(0.2, 3.0), "sidecar": _row(0.6, 3.25, 310), "agent": _row(0.5, 7.0, 290),
         "haproxy": _row(0.4, 3.05, 155)},
        {"none": _row(0.1, 1.1), "sidecar": _row(0.5, 1.4, 305), "agent": _row(0.4, 5.1, 285),
         "haproxy": _row(0.3, 1.3, 122)},
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
    # The peer is judged by the same goal, marked as the peer, and Tulle's paths are read
    # against it round by round: a difference of added p99 and a ratio of CPU per request.
    assert out["targets"]["haproxy_added_p99_ms"] == {
        "goal": TARGET_ADDED_P99_MS, "median": 0.1, "met": True, "peer": True}
    assert out["sidecar"]["vs_haproxy"]["added_p99_ms_minus_haproxy"] == {
        "median": 0.1, "min": 0.1, "max": 0.2}
    assert out["sidecar"]["vs_haproxy"]["cpu_ratio"] == {"median": 2.5, "min": 2.0, "max": 3.0}
    assert "vs_haproxy" not in out["haproxy"]


def test_the_benchmark_mesh_is_valid_resources() -> None:
    kinds = [parse(r).kind for r in _resources()]
    assert kinds.count("Workload") == 4 and kinds.count("Service") == 2


def test_the_haproxy_sidecars_listen_where_the_interception_sends_and_dial_the_pod(
        tmp_path: Path) -> None:
    from bench.mtls_peers import haproxy_tls_configs
    from bench.netns_mesh import ADDR, APP_PORT, HAPROXY_IN, HAPROXY_OUT, PROXY_UID

    files = {k: tmp_path / f"{k}.pem" for k in ("ca", "client", "server")}
    hop1, hop2 = haproxy_tls_configs(tmp_path, files, HAPROXY_OUT, HAPROXY_IN, APP_PORT,
                                     bind="0.0.0.0", hop2_dial=f"{ADDR['s-hap']}:{APP_PORT}",
                                     uid=PROXY_UID)
    assert "bind 0.0.0.0:15001\n" in hop1 and "bind 0.0.0.0:15006 ssl" in hop2
    assert f"server h2 {ADDR['s-hap']}:{APP_PORT} ssl verify required" in hop1
    assert f"uid {PROXY_UID}\n  gid {PROXY_UID}\n" in hop1 and "uid 1337" in hop2
    # The loopback peer's configs are what they were.
    lo1, lo2 = haproxy_tls_configs(tmp_path, files, 4001, 4002, 4003)
    assert "bind 127.0.0.1:4001\n" in lo1 and "server h2 127.0.0.1:4002 ssl" in lo1
    assert "bind 127.0.0.1:4002 ssl" in lo2 and "uid" not in lo1 + lo2


def test_without_namespaces_the_run_is_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.netns as netns_bench

    monkeypatch.setattr(netns_bench, "missing_requirements", lambda: "network namespaces need root")
    args = argparse.Namespace(rate=1000.0, duration=1.0, warmup=0.1, connections=1, rounds=1,
                              nice=0)
    got = netns_bench.run(args)
    assert got["skipped"] == "network namespaces need root" and "none" not in got
