"""The mTLS benchmark row: its Tulle configs are valid contracts, and its results file is
merged, never overwritten (the control plane's bench writes `ca_signs_per_s` there)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.mtls_peers import SERVER_ID, tulle_client_config, tulle_server_config
from bench.run import write_mtls

from tulle.proxyconfig import validate


def test_both_hops_validate_with_and_without_mtls() -> None:
    for mtls in (True, False):
        client = validate(tulle_client_config(1001, 1002, 1003, mtls))
        server = validate(tulle_server_config(1003, 1004, 1005, mtls))
        tls = client.clusters[0].tls
        if mtls:
            assert tls is not None and tls.expected_spiffe_ids == [SERVER_ID]
            assert tls.min_version == "1.3"
            assert server.listeners[0].filter_chains[0].match.transport == "tls"
        else:
            assert tls is None and not server.listeners[0].filter_chains


def test_results_are_merged_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mtls.json"
    path.write_text(json.dumps({"ca_signs_per_s": 1234.5, "added_p99_ms": 9.9,
                                "added_p99_ms_range": [5.0, 9.9], "rounds": [{"x": 1}]}))
    res = {"mode": "quick", "timestamp": "t", "machine": {"git_rev": "r"},
           "loadavg_before": [0.0], "direct": {"p99_ms": 0.1},
           "mtls": {"added_p99_ms": 0.2, "handshakes_per_s": 500.0}}
    write_mtls(path, res)
    got = json.loads(path.read_text())
    assert got["ca_signs_per_s"] == 1234.5
    assert got["added_p99_ms"] == 0.2 and got["handshakes_per_s"] == 500.0
    assert got["mtls_run"]["direct_p99_ms"] == 0.1
    # an older run's ranges and rounds would contradict this run's figures: they go
    assert "added_p99_ms_range" not in got and "rounds" not in got


def test_each_rounds_added_latency_is_kept() -> None:
    from bench.verdicts import derive_mtls
    res = {"direct": {"p50_ms_by_round": [0.1, 0.2], "p99_ms_by_round": [0.3, 0.4]},
           "tulle-mtls": {"p99_ms": 1.0, "added_p99_ms_vs_direct": 0.5,
                          "p50_ms_by_round": [0.4, 0.6], "p99_ms_by_round": [0.9, 0.8],
                          "cpu_us_per_req_range": [200.0, 230.0]}}
    out = derive_mtls(res)
    assert out["added_p50_ms_by_round"] == [0.3, 0.4]
    assert out["added_p99_ms_by_round"] == [0.6, 0.4]
    assert out["cpu_us_per_req_range"] == [200.0, 230.0]
