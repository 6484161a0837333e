"""Mesh: cluster-scoped, defaults for every field, enums for the modes."""

from __future__ import annotations

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.fields import duration_ms
from tulle.api.mesh import Mesh

MESH = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"}}


def test_defaults() -> None:
    mesh = parse(MESH)
    assert isinstance(mesh, Mesh)
    assert mesh.metadata.namespace is None
    assert mesh.spec.trustDomain == "cluster.local"
    assert mesh.spec.mtls.mode == "STRICT"
    assert mesh.spec.outboundTrafficPolicy.mode == "ALLOW_ANY"
    budget = mesh.spec.defaults.retryBudget
    assert (budget.percent, budget.minRetriesPerSecond) == (20, 10)
    assert duration_ms(mesh.spec.defaults.requestTimeout) == 15_000


def test_rules(errors: Errors) -> None:
    assert errors(with_(MESH, "spec", {"mtls": {"mode": "ON"}})) == [
        ("spec.mtls.mode", 'must be "STRICT", "PERMISSIVE" or "DISABLED", got "ON"')
    ]
    assert errors(with_(MESH, "spec", {"outboundTrafficPolicy": {"mode": "allow_any"}})) == [
        ("spec.outboundTrafficPolicy.mode", 'must be "ALLOW_ANY" or "REGISTRY_ONLY", got "allow_any"')
    ]
    assert errors(with_(MESH, "spec", {"trustDomain": "Example.COM"})) == [
        (
            "spec.trustDomain",
            'must be a SPIFFE trust domain (lowercase letters, digits, "-", "_" and "."), got "Example.COM"',
        )
    ]
    assert errors(with_(MESH, "spec", {"defaults": {"retryBudget": {"percent": 101}}})) == [
        ("spec.defaults.retryBudget.percent", "must be <= 100, got 101")
    ]
    assert errors(with_(MESH, "metadata", {"name": "default", "namespace": "x"})) == [
        ("metadata.namespace", "Mesh is cluster-scoped and takes no namespace")
    ]


def test_defaults_retry_and_its_budget(errors: Errors) -> None:
    assert errors(with_(MESH, "spec", {"defaults": {"retry": {"attempts": 1}}})) == []
    assert errors(with_(MESH, "spec", {"defaults": {"retry": {"budget": {"percent": 5}}}})) == [
        ("spec.defaults.retry.budget", "the Mesh's budget is retryBudget")]
    assert errors(with_(MESH, "spec", {"defaults": {"retryBudget": {"ttl": "100ms"}}})) == [
        ("spec.defaults.retryBudget.ttl", "must be between 1s and 10m")]


def test_trust_domain_aliases(errors: Errors) -> None:
    ok = with_(MESH, "spec", {"trustDomain": "example.org", "trustDomainAliases": ["cluster.local"]})
    assert errors(ok) == []
    assert errors(with_(MESH, "spec", {"trustDomainAliases": ["cluster.local"]})) == [
        ("spec.trustDomainAliases[0]", "cluster.local is the trustDomain itself")]
    assert errors(with_(MESH, "spec", {"trustDomainAliases": ["a.org", "a.org"]})) == [
        ("spec.trustDomainAliases[1]", "a.org is listed twice")]
    assert errors(with_(MESH, "spec", {"trustDomainAliases": ["A.org"]}))[0][0] == (
        "spec.trustDomainAliases[0]")
