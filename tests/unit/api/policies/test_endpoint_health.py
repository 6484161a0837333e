"""OutlierDetectionPolicy and HealthCheckPolicy (ADR 0040): valid for a Mesh, Namespace or
Service; impossible values refused with their paths; the Mesh default takes the same settings."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.mesh import Mesh
from tulle.api.policies.health_check import HealthCheckPolicy
from tulle.api.policies.outlier_detection import OutlierDetectionPolicy

TARGET = {"group": "", "kind": "Service", "name": "reviews"}
OD: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "OutlierDetectionPolicy",
    "metadata": {"name": "od", "namespace": "shop"},
    "spec": {"targetRef": TARGET, "consecutive5xx": 3, "interval": "5s",
             "baseEjectionTime": "30s", "maxEjectionTime": "5m", "maxEjectionPercent": 50,
             "successRate": {"minimumHosts": 3, "standardDeviationFactor": 1.5}}}
HC: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "HealthCheckPolicy",
    "metadata": {"name": "hc", "namespace": "shop"},
    "spec": {"targetRef": TARGET, "http": {"path": "/healthz", "expectedStatuses": [200]},
             "interval": "5s", "timeout": "1s", "healthyThreshold": 1}}


def test_valid_for_a_service_a_namespace_and_the_mesh() -> None:
    assert isinstance(parse(OD), OutlierDetectionPolicy)
    assert isinstance(parse(HC), HealthCheckPolicy)
    for ref in ({"group": "", "kind": "Namespace", "name": "shop"},
                {"group": "mesh.tulle.dev", "kind": "Mesh", "name": "default"}):
        assert isinstance(parse(with_(OD, "spec.targetRef", ref)), OutlierDetectionPolicy)
        assert isinstance(parse(with_(HC, "spec.targetRef", ref)), HealthCheckPolicy)
    grpc = {"targetRef": TARGET, "grpc": {"serviceName": "shop.Reviews"}}
    assert parse(with_(HC, "spec", grpc)).spec.grpc.serviceName == "shop.Reviews"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("doc", "path", "value", "expected"), [
    (OD, "spec", {"targetRef": TARGET}, ("spec", "set at least one of")),
    (OD, "spec.consecutive5xx", -1, ("spec.consecutive5xx", "")),
    (OD, "spec.interval", "-5s", ("spec.interval", "")),
    (OD, "spec.interval", "0s", ("spec.interval", "must be from 1ms")),
    (OD, "spec.maxEjectionTime", "10s", ("spec.maxEjectionTime",
                                         "must not be less than baseEjectionTime")),
    (OD, "spec.maxEjectionPercent", 101, ("spec.maxEjectionPercent", "")),
    (OD, "spec.successRate", {"standardDeviationFactor": 0}, (
        "spec.successRate.standardDeviationFactor", "")),
    (OD, "spec.targetRef", {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                            "name": "r"}, ("spec.targetRef.kind",
                                           "OutlierDetectionPolicy cannot target HTTPRoute")),
    (HC, "spec.tcp", {}, ("spec.tcp", "only one of http, grpc, tcp (also http)")),
    (HC, "spec.timeout", "10s", ("spec.timeout", "must not exceed interval")),
    (HC, "spec.interval", "0s", ("spec.interval", "must be from 1ms")),
    (HC, "spec.http.path", "healthz", ("spec.http.path", "")),
    (HC, "spec.http.expectedStatuses", [600], ("spec.http.expectedStatuses[0]", "")),
    (HC, "spec.http.host", "a b", ("spec.http.host", "")),
    (HC, "spec.unhealthyThreshold", 0, ("spec.unhealthyThreshold", "")),
    (HC, "spec.jitter", "-1s", ("spec.jitter", "")),
])
def test_bad_input_is_refused_with_its_path(errors: Errors, doc: dict[str, Any], path: str,
                                            value: Any, expected: tuple[str, str]) -> None:
    got = errors(with_(doc, path, value))
    assert any(p == expected[0] and expected[1] in m for p, m in got), got


def test_the_mesh_defaults_take_the_same_settings(errors: Errors) -> None:
    mesh = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"defaults": {"outlierDetection": {"consecutive5xx": 7},
                                  "healthCheck": {"tcp": {}, "interval": "2s"}}}}
    m = parse(mesh)
    assert isinstance(m, Mesh) and m.spec.defaults.outlierDetection is not None
    assert m.spec.defaults.outlierDetection.consecutive5xx == 7
    bad = with_(mesh, "spec.defaults.healthCheck.http", {"path": "/"})
    assert errors(bad) == [("spec.defaults.healthCheck.tcp",
                            "only one of http, grpc, tcp (also http)")]
