"""`tulle stat`'s tables from a `/api/v1/stat` document."""

from __future__ import annotations

from typing import Any

from tulle.cli.stat import render


def _stat(requests: int, failures: int, rps: float, p50: float | None) -> dict[str, Any]:
    return {"requests": requests, "failures": failures,
            "successRate": (1 - failures / requests) if requests else None, "rps": rps,
            "latencyMs": {"p50": p50, "p95": p50, "p99": p50, "mean": p50},
            "tcpConnections": 2}


DOC = {"window": "30s", "resourceKind": "Service",
       "items": [{"kind": "Service", "namespace": "shop", "name": "api", "meshed": 1,
                  **_stat(70, 10, 2.333, 2.9)},
                 {"kind": "Service", "namespace": "shop", "name": "db", "meshed": 0,
                  **_stat(0, 0, 0.0, None)}],
       "edges": [{"from": {"kind": "Workload", "namespace": "shop", "name": "a-0"},
                  "to": {"kind": "Service", "namespace": "shop", "name": "api"},
                  **_stat(50, 10, 1.667, 12.0)}]}


def test_a_kubectl_like_table() -> None:
    lines = render(DOC, wide=False, all_namespaces=False, edges=False).splitlines()
    assert lines[0].split() == ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50",
                                "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]
    assert lines[1].split() == ["api", "1", "85.71%", "2.3rps", "2.9ms", "2.9ms", "2.9ms", "2"]
    assert lines[2].split() == ["db", "0", "-", "0.0rps", "-", "-", "-", "2"]
    assert len(lines) == 3  # no edges unless asked


def test_wide_adds_columns_a_namespace_and_the_edges() -> None:
    out = render(DOC, wide=True, all_namespaces=True, edges=False)
    head, *rest = out.splitlines()
    assert head.split()[:2] == ["NAMESPACE", "NAME"]
    assert head.split()[-3:] == ["REQUESTS", "FAILURES", "LATENCY_MEAN"]
    assert rest[0].split()[-3:] == ["70", "10", "2.9ms"]
    edges = out.split("\n\n")[1].splitlines()
    assert edges[0].split()[:2] == ["FROM", "TO"]
    assert edges[1].split()[:4] == ["shop/a-0", "shop/api", "80.00%", "1.7rps"]
    assert edges[1].split()[4] == "12ms"


def test_nothing_reported_says_so() -> None:
    out = render({"window": "30s", "resourceKind": "Workload", "items": [], "edges": []},
                 wide=False, all_namespaces=False, edges=True)
    assert out.startswith("No traffic reported for any Workload in the last 30s")
