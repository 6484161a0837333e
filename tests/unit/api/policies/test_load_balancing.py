"""LoadBalancingPolicy: balancer type, hash policies and settings for a Mesh, Namespace or
Service; what one spec alone gets wrong is refused with its path."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.mesh import Mesh
from tulle.api.policies.load_balancing import LoadBalancingPolicy

LB: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1",
    "kind": "LoadBalancingPolicy",
    "metadata": {"name": "lb", "namespace": "shop"},
    "spec": {
        "targetRef": {"group": "", "kind": "Service", "name": "cart"},
        "type": "Maglev",
        "hashPolicies": [{"type": "Header", "name": "x-user"}, {"type": "Cookie", "name": "sid"},
                         {"type": "QueryParameter", "name": "u"}, {"type": "SourceIP"}],
        "maglev": {"tableSize": 65537},
        "panicThreshold": 30,
    },
}


def test_valid_for_a_service_a_namespace_and_the_mesh() -> None:
    p = parse(LB)
    assert isinstance(p, LoadBalancingPolicy) and p.spec.type == "Maglev"
    for ref in ({"group": "", "kind": "Namespace", "name": "shop"},
                {"group": "mesh.tulle.dev", "kind": "Mesh", "name": "default"}):
        assert isinstance(parse(with_(LB, "spec.targetRef", ref)), LoadBalancingPolicy)
    ramp = {"targetRef": LB["spec"]["targetRef"], "type": "PeakEWMA",
            "slowStart": {"window": "30s"}, "localityAware": {"enabled": True},
            "peakEWMA": {"decay": "5s"}}
    assert parse(with_(LB, "spec", ramp)).spec.slowStart.window == "30s"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("spec", {"targetRef": LB["spec"]["targetRef"]}, ("spec", "set at least one of")),
    ("spec.type", "Fastest", ("spec.type", "")),
    ("spec.hashPolicies.0.name", "x user", ("spec.hashPolicies[0].name",
                                            "'x user' cannot be an HTTP header name")),
    ("spec.hashPolicies.0.name", ":path", ("spec.hashPolicies[0].name",
                                           "':path' cannot be an HTTP header name")),
    ("spec.hashPolicies.1", {"type": "Cookie"}, ("spec.hashPolicies[1].name",
                                                 "required with type Cookie")),
    ("spec.hashPolicies.3", {"type": "SourceIP", "name": "x"},
     ("spec.hashPolicies[3].name", "not with type SourceIP")),
    ("spec.hashPolicies", [], ("spec.hashPolicies", "")),
    ("spec.maglev", {"tableSize": 8192}, ("spec.maglev.tableSize", "must be a prime, got 8192")),
    ("spec.type", "RoundRobin", ("spec.hashPolicies", "type RoundRobin does not hash")),
    ("spec.slowStart", {"window": "10s"}, ("spec.slowStart", "not with type Maglev")),
    ("spec.panicThreshold", 101, ("spec.panicThreshold", "")),
    ("spec.targetRef", {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"},
     ("spec.targetRef.kind", "LoadBalancingPolicy cannot target HTTPRoute")),
])
def test_bad_input_is_refused_with_its_path(errors: Errors, path: str, value: Any,
                                            expected: tuple[str, str]) -> None:
    got = errors(with_(LB, path, value))
    assert any(p == expected[0] and expected[1] in m for p, m in got), got


def test_the_mesh_default_takes_the_same_settings(errors: Errors) -> None:
    mesh = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"defaults": {"loadBalancing": {"type": "LeastRequest",
                                                    "leastRequest": {"choiceCount": 3}}}}}
    m = parse(mesh)
    assert isinstance(m, Mesh) and m.spec.defaults.loadBalancing is not None
    assert m.spec.defaults.loadBalancing.type == "LeastRequest"
    bad = with_(mesh, "spec.defaults.loadBalancing.hashPolicies", [{"type": "SourceIP"}])
    assert errors(bad) == [("spec.defaults.loadBalancing.hashPolicies",
                            "type LeastRequest does not hash (use RingHash or Maglev)")]
