"""Endpoint health in the compiler (ADR 0040): a disconnected proxy's workload leaves its
Services' endpoints, a never-connected one stays; health policies reach the callers'
clusters."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, compile_mesh


def workload(name: str, port: int, proxy: str | None = None, **labels: str) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "Workload", "metadata": {"name": name, "namespace": "ns", "labels": labels},
        "spec": {"address": "127.0.0.1", "ports": [{"name": "http", "port": port,
                                                     "targetPort": port + 1000}]}}
    if proxy is not None:
        obj["status"] = {"proxy": {"state": proxy, "reason": "test", "session": "s1"}}
    return obj


SERVICE = {"kind": "Service", "metadata": {"name": "api", "namespace": "ns"},
           "spec": {"selector": {"app": "api"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def api_cluster(resources: list[dict[str, Any]]) -> Any:
    snap = compile_mesh(MeshInputs.from_resources(resources)).snapshots[("ns", "web")]
    (c,) = [c for c in snap.clusters if c.metadata and c.metadata.service == "api"]
    return c


def test_only_a_disconnected_proxys_workload_leaves_the_endpoints() -> None:
    base = [workload("web", 18000, app="web"), SERVICE]
    c = api_cluster([*base, workload("a", 18001, "Connected", app="api"),
                     workload("b", 18002, "Disconnected", app="api"),
                     workload("c", 18003, None, app="api")])
    assert sorted(e.port for e in c.endpoints) == [18001, 18003]


def test_health_policies_reach_the_callers_cluster() -> None:
    od = {"kind": "OutlierDetectionPolicy", "metadata": {"name": "od", "namespace": "ns"},
          "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                   "consecutive5xx": 2, "baseEjectionTime": "5s"}}
    hc = {"kind": "HealthCheckPolicy", "metadata": {"name": "hc", "namespace": "ns"},
          "spec": {"targetRef": {"group": "", "kind": "Namespace", "name": "ns"},
                   "http": {"path": "/healthz", "expectedStatuses": [204]},
                   "interval": "2s"}}
    c = api_cluster([workload("web", 18000, app="web"), workload("a", 18001, app="api"),
                     SERVICE, od, hc])
    assert c.outlier_detection is not None and c.outlier_detection.consecutive_5xx == 2
    assert c.outlier_detection.base_ejection_time_ms == 5000
    assert c.outlier_detection.consecutive_gateway_errors == 5  # the contract's default
    assert c.health_check is not None and c.health_check.type == "http"
    assert (c.health_check.path, c.health_check.expected_statuses) == ("/healthz", [204])
    assert c.health_check.interval_ms == 2000


def test_without_any_policy_clusters_have_neither() -> None:
    c = api_cluster([workload("web", 18000, app="web"), workload("a", 18001, app="api"),
                     SERVICE])
    assert c.outlier_detection is None and c.health_check is None


def test_two_policies_at_one_level_the_oldest_wins_a_field() -> None:
    def od(name: str, created: str, n: int) -> dict[str, Any]:
        return {"kind": "OutlierDetectionPolicy",
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
                "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                         "consecutive5xx": n}}

    base = [workload("web", 18000, app="web"), workload("a", 18001, app="api"), SERVICE]
    c = api_cluster([*base, od("a-new", "2026-02-01T00:00:00Z", 2),
                     od("z-old", "2026-01-01T00:00:00Z", 7)])
    assert c.outlier_detection is not None and c.outlier_detection.consecutive_5xx == 7
