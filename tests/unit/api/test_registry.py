"""The kind registry: lookup, kubectl-style names, and parse's envelope errors."""

from __future__ import annotations

import pytest

from tulle.api import ValidationError, kinds, lookup, parse, resolve

EXPECTED = {
    ("mesh.tulle.dev/v1alpha1", "Mesh"): ("Cluster", "meshes"),
    ("mesh.tulle.dev/v1alpha1", "Workload"): ("Namespaced", "workloads"),
    ("mesh.tulle.dev/v1alpha1", "Service"): ("Namespaced", "services"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): ("Namespaced", "httproutes"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): ("Namespaced", "grpcroutes"),
    ("gateway.networking.k8s.io/v1alpha2", "TCPRoute"): ("Namespaced", "tcproutes"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): ("Namespaced", "referencegrants"),
    ("policy.tulle.dev/v1alpha1", "TimeoutPolicy"): ("Namespaced", "timeoutpolicies"),
    ("policy.tulle.dev/v1alpha1", "AuthorizationPolicy"): ("Namespaced", "authorizationpolicies"),
    ("policy.tulle.dev/v1alpha1", "MutualTLSPolicy"): ("Namespaced", "mutualtlspolicies"),
    ("policy.tulle.dev/v1alpha1", "LoadBalancingPolicy"): ("Namespaced", "loadbalancingpolicies"),
    ("policy.tulle.dev/v1alpha1", "OutlierDetectionPolicy"): ("Namespaced",
                                                            "outlierdetectionpolicies"),
    ("policy.tulle.dev/v1alpha1", "HealthCheckPolicy"): ("Namespaced", "healthcheckpolicies"),
    ("policy.tulle.dev/v1alpha1", "RetryPolicy"): ("Namespaced", "retrypolicies"),
    ("policy.tulle.dev/v1alpha1", "FaultInjectionPolicy"): ("Namespaced",
                                                            "faultinjectionpolicies"),
    ("policy.tulle.dev/v1alpha1", "RateLimitPolicy"): ("Namespaced", "ratelimitpolicies"),
    ("policy.tulle.dev/v1alpha1", "CircuitBreakerPolicy"): ("Namespaced",
                                                          "circuitbreakerpolicies"),
}


def test_every_kind_is_registered() -> None:
    got = {(k.api_version, k.kind): (k.scope, k.plural) for k in kinds()}
    assert got == EXPECTED
    assert lookup("gateway.networking.k8s.io/v1", "HTTPRoute").group == "gateway.networking.k8s.io"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("httproutes", "HTTPRoute"),
        ("HTTPRoute", "HTTPRoute"),
        ("httproute", "HTTPRoute"),
        ("svc", "Service"),
        ("services.mesh.tulle.dev", "Service"),
        ("wl", "Workload"),
        ("meshes", "Mesh"),
        ("tp", "TimeoutPolicy"),
        ("authz", "AuthorizationPolicy"),
        ("mtls", "MutualTLSPolicy"),
        ("fip", "FaultInjectionPolicy"),
        ("rlp", "RateLimitPolicy"),
    ],
)
def test_resolve(name: str, kind: str) -> None:
    assert resolve(name).kind == kind


def test_resolve_unknown() -> None:
    with pytest.raises(KeyError, match='unknown resource type "pods"'):
        resolve("pods")
    with pytest.raises(KeyError):
        resolve("services.example.com")


@pytest.mark.parametrize(
    ("doc", "errors"),
    [
        ([], [("", "must be a mapping (an object), got list")]),
        ({}, [("apiVersion", "required"), ("kind", "required")]),
        ({"apiVersion": 1, "kind": "Mesh"}, [("apiVersion", "must be a string")]),
        (
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}},
            [("kind", 'kind Service is served as apiVersion mesh.tulle.dev/v1alpha1, not "v1"')],
        ),
    ],
)
def test_envelope_errors(doc: object, errors: list[tuple[str, str]]) -> None:
    with pytest.raises(ValidationError) as info:
        parse(doc)
    assert info.value.pairs() == errors


def test_unknown_kind_lists_known_ones() -> None:
    with pytest.raises(ValidationError) as info:
        parse({"apiVersion": "x/v1", "kind": "Pod"})
    [(path, message)] = info.value.pairs()
    assert path == "kind"
    assert message.startswith(
        'unknown kind "Pod" (apiVersion "x/v1"); known kinds: AuthorizationPolicy, '
        'CircuitBreakerPolicy, FaultInjectionPolicy, GRPCRoute'
    )


ROUTE_SPEC = {"parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 80}],
              "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1beta1", "HTTPRoute"),
        ("policy.linkerd.io/v1beta3", "HTTPRoute"),
        ("policy.linkerd.io/v1beta2", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"),
        ("gateway.networking.k8s.io/v1alpha2", "GRPCRoute"),
    ],
)
def test_route_versions_are_accepted_and_kept(api_version: str, kind: str) -> None:
    r = parse({"apiVersion": api_version, "kind": kind, "metadata": {"name": "r"}, "spec": ROUTE_SPEC})
    assert r.api_version == api_version  # stored and served as written (ADR 0024)
    assert r.to_dict()["apiVersion"] == api_version
    info = lookup(api_version, kind)
    assert info is resolve(kind.lower()) and info.api_version == "gateway.networking.k8s.io/v1"


def test_a_kind_served_in_several_versions_is_one_kind() -> None:
    assert [k.kind for k in kinds()].count("HTTPRoute") == 1
    assert resolve("httproutes").api_versions == (
        "gateway.networking.k8s.io/v1",
        "gateway.networking.k8s.io/v1beta1",
        "policy.linkerd.io/v1beta3",
        "policy.linkerd.io/v1beta2",
    )


def test_a_version_not_served_names_the_served_ones() -> None:
    with pytest.raises(ValidationError) as exc:
        parse({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "HTTPRoute", "metadata": {"name": "r"}})
    assert "gateway.networking.k8s.io/v1beta1" in str(exc.value)
    assert "policy.linkerd.io/v1beta3" in str(exc.value)
