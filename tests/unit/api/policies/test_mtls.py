"""MutualTLSPolicy: an mTLS mode for the Mesh, a Service or one port of it (ADR 0033)."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.policies.mtls import MutualTLSPolicy

POLICY: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1",
    "kind": "MutualTLSPolicy",
    "metadata": {"name": "edge", "namespace": "shop"},
    "spec": {"targetRef": {"group": "", "kind": "Service", "name": "frontend",
                           "sectionName": "http"},
             "mode": "PERMISSIVE"},
}


def test_valid() -> None:
    p = parse(POLICY)
    assert isinstance(p, MutualTLSPolicy)
    assert (p.spec.mode, p.spec.targetRef.sectionName) == ("PERMISSIVE", "http")
    mesh = with_(POLICY, "spec.targetRef", {"group": "mesh.tulle.dev", "kind": "Mesh",
                                            "name": "default"})
    assert parse(mesh).spec.targetRef.target == ("mesh.tulle.dev", "Mesh")


def test_refused_with_paths(errors: Errors) -> None:
    assert errors(with_(POLICY, "spec.mode", "OPPORTUNISTIC")) == [
        ("spec.mode", 'must be "STRICT", "PERMISSIVE" or "DISABLED", got "OPPORTUNISTIC"')]
    no_mode = with_(POLICY, "spec", {"targetRef": POLICY["spec"]["targetRef"]})
    assert [p for p, _ in errors(no_mode)] == ["spec.mode"]
    route = with_(POLICY, "spec.targetRef", {"group": "gateway.networking.k8s.io",
                                             "kind": "HTTPRoute", "name": "r"})
    assert [p for p, _ in errors(route)] == ["spec.targetRef.kind"]
    mesh_port = with_(POLICY, "spec.targetRef", {"group": "mesh.tulle.dev", "kind": "Mesh",
                                                 "name": "default", "sectionName": "http"})
    assert errors(mesh_port) == [("spec.targetRef.sectionName", "a Mesh has no sections")]
