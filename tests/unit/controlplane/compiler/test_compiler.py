"""Compiler behaviour beyond the golden files: versions, isolation of failures."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, compile_mesh


def workload(name: str, port: int, **labels: str) -> dict[str, Any]:
    return {"kind": "Workload", "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"address": "127.0.0.1", "ports": [{"name": "http", "port": port,
                                                         "targetPort": port + 1000}]}}


def service(name: str, **selector: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80,
                                                       "targetPort": "http"}]}}


def test_an_unrelated_change_keeps_a_proxys_version() -> None:
    base = [workload("a", 18001, app="a"), workload("b", 18002, app="b"), service("b", app="b")]
    v1 = compile_mesh(MeshInputs.from_resources(base)).snapshots
    # A label that no selector uses changes nothing any proxy runs.
    changed = [workload("a", 18001, app="a", team="x"), *base[1:]]
    v2 = compile_mesh(MeshInputs.from_resources(changed)).snapshots
    assert v1[("ns", "b")].version == v2[("ns", "b")].version
    # A new endpoint for service b changes every proxy that calls b.
    grown = [*base, workload("b2", 18003, app="b")]
    v3 = compile_mesh(MeshInputs.from_resources(grown)).snapshots
    assert v3[("ns", "a")].version != v1[("ns", "a")].version


def test_a_workload_that_cannot_compile_does_not_hold_back_the_others() -> None:
    bad = workload("bad", 18001, app="x")
    bad["spec"]["ports"].append({"name": "dup", "port": 18001})  # the same port twice
    res = compile_mesh(MeshInputs.from_resources([bad, workload("good", 18005, app="y")]))
    assert ("ns", "good") in res.snapshots
    assert ("ns", "bad") not in res.snapshots
    assert "duplicate name 'inbound|18001'" in res.errors[("ns", "bad")]
