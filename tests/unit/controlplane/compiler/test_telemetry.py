"""`Mesh.spec.observability.metrics` -> each proxy's `telemetry.metrics` (ADR 0053)."""

from __future__ import annotations

from typing import Any

from tulle.api.mesh import Mesh
from tulle.controlplane.compiler import MeshInputs, compile_mesh


def workload(name: str, port: int, sa: str = "", **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": "127.0.0.1", "ports": [
        {"name": "http", "port": port, "targetPort": port + 1000}]}
    if sa:
        spec["serviceAccount"] = sa
    return {"kind": "Workload", "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": spec}


def mesh(metrics: dict[str, Any]) -> dict[str, Any]:
    doc = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
           "metadata": {"name": "default"},
           "spec": {"trustDomain": "td.example", "observability": {"metrics": metrics}}}
    Mesh.model_validate(doc)  # what `tulle apply` accepts
    return doc


BASE = [workload("web-1", 18001, "web", app="web", version="v2"),
        workload("api-1", 18002, "api", app="api", version="v1"),
        workload("api-2", 18003, "api", app="api", version="v1")]


def test_metrics_are_on_by_default_with_the_workload_and_the_mesh_identities() -> None:
    snap = compile_mesh(MeshInputs.from_resources(BASE)).snapshots[("ns", "web-1")]
    m = snap.telemetry.metrics
    assert m is not None
    assert (m.workload, m.app, m.version) == ("web-1", "web", "v2")
    assert m.principal == "spiffe://cluster.local/ns/ns/sa/web"
    assert m.max_series_per_family == 2000 and m.cluster == "unknown"
    # api-1 and api-2 share one service account: that identity names no single workload.
    assert [(p.principal, p.workload, p.app, p.version) for p in m.peers] == [
        ("spiffe://cluster.local/ns/ns/sa/web", "web-1", "web", "v2")]


def test_the_mesh_bounds_and_names_them() -> None:
    res = compile_mesh(MeshInputs.from_resources(
        [*BASE, mesh({"maxSeriesPerFamily": 50, "clusterName": "eu-1"})]))
    m = res.snapshots[("ns", "api-1")].telemetry.metrics
    assert m is not None
    assert m.max_series_per_family == 50 and m.cluster == "eu-1"
    assert m.principal == "spiffe://td.example/ns/ns/sa/api"


def test_metrics_off_sends_no_section_and_changes_the_version() -> None:
    on = compile_mesh(MeshInputs.from_resources([*BASE, mesh({})])).snapshots
    off = compile_mesh(MeshInputs.from_resources([*BASE, mesh({"enabled": False})])).snapshots
    assert off[("ns", "web-1")].telemetry.metrics is None
    assert on[("ns", "web-1")].version != off[("ns", "web-1")].version
    bounded = compile_mesh(MeshInputs.from_resources(
        [*BASE, mesh({"maxSeriesPerFamily": 9})])).snapshots
    assert bounded[("ns", "web-1")].version != on[("ns", "web-1")].version
