"""CircuitBreakerPolicy (ADR 0037, issue 10 item 5): valid for a Mesh, Namespace or Service;
impossible values refused with their paths; the Mesh default takes the same settings."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.mesh import Mesh
from tulle.api.policies.circuit_breaker import CircuitBreakerPolicy

TARGET = {"group": "", "kind": "Service", "name": "reviews"}
CB: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "CircuitBreakerPolicy",
    "metadata": {"name": "cb", "namespace": "shop"},
    "spec": {"targetRef": TARGET, "maxConnections": 10, "maxPendingRequests": 0,
             "maxRequests": 5, "maxRetries": 0}}


def test_valid_for_a_service_a_namespace_and_the_mesh() -> None:
    assert isinstance(parse(CB), CircuitBreakerPolicy)
    for ref in ({"group": "", "kind": "Namespace", "name": "shop"},
                {"group": "mesh.tulle.dev", "kind": "Mesh", "name": "default"}):
        assert isinstance(parse(with_(CB, "spec.targetRef", ref)), CircuitBreakerPolicy)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("spec", {"targetRef": TARGET}, ("spec", "set at least one of")),
    ("spec.maxConnections", 0, ("spec.maxConnections", "")),
    ("spec.maxRequests", 0, ("spec.maxRequests", "")),
    ("spec.maxPendingRequests", -1, ("spec.maxPendingRequests", "")),
    ("spec.maxRetries", 1_000_001, ("spec.maxRetries", "")),
    ("spec.maxRequests", "10", ("spec.maxRequests", "")),
    ("spec.maxQueue", 1, ("spec.maxQueue", "unknown field")),
    ("spec.targetRef", {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"},
     ("spec.targetRef.kind", "CircuitBreakerPolicy cannot target HTTPRoute")),
])
def test_bad_input_is_refused_with_its_path(errors: Errors, path: str, value: Any,
                                            expected: tuple[str, str]) -> None:
    got = errors(with_(CB, path, value))
    assert any(p == expected[0] and expected[1] in m for p, m in got), got


def test_the_mesh_default_takes_the_same_settings(errors: Errors) -> None:
    mesh = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"defaults": {"circuitBreaker": {"maxRequests": 64}}}}
    m = parse(mesh)
    assert isinstance(m, Mesh) and m.spec.defaults.circuitBreaker is not None
    assert m.spec.defaults.circuitBreaker.maxRequests == 64
    assert errors(with_(mesh, "spec.defaults.circuitBreaker.maxRequests", 0))[0][0] == (
        "spec.defaults.circuitBreaker.maxRequests")
