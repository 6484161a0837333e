"""Policy attachment: one targetRef mechanism, checked against what each policy kind may target."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pydantic
import pytest
from tests.unit.api.support import Errors, with_

from tulle.api import kinds, lookup
from tulle.api.policy import MESH_TARGET, Policy, PolicySpec


def _policy(kind: str, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy.tulle.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"targetRef": target, **spec},
    }


SERVICE = {"group": "", "kind": "Service", "name": "reviews"}


def test_policy_kinds_are_registered_with_their_targets() -> None:
    policies = {k.kind: k for k in kinds() if k.is_policy}
    assert set(policies) >= {"TimeoutPolicy", "AuthorizationPolicy"}
    assert ("", "Service") in policies["TimeoutPolicy"].policy_targets  # type: ignore[operator]
    assert lookup("mesh.tulle.dev/v1alpha1", "Mesh").is_policy is False


def test_core_group_spellings_are_equivalent(errors: Errors) -> None:
    for group in ("", "core"):
        assert errors(_policy("TimeoutPolicy", {**SERVICE, "group": group}, requestTimeout="1s")) == []


def test_target_kind_not_allowed(errors: Errors) -> None:
    doc = _policy(
        "AuthorizationPolicy", {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}
    )
    assert errors(doc) == [
        (
            "spec.targetRef.kind",
            'AuthorizationPolicy cannot target HTTPRoute in group "gateway.networking.k8s.io"; '
            'it may target Namespace (core), Service (core), Mesh ("mesh.tulle.dev")',
        )
    ]


def test_target_ref_fields(errors: Errors) -> None:
    assert errors(_policy("TimeoutPolicy", {"kind": "Service", "name": "x"}, idleTimeout="1s")) == [
        ("spec.targetRef.group", "required")
    ]
    assert errors(_policy("TimeoutPolicy", {**SERVICE, "sectionName": "http"}, idleTimeout="1s")) == []
    mesh = {"group": "mesh.tulle.dev", "kind": "Mesh", "name": "default", "sectionName": "x"}
    assert errors(_policy("TimeoutPolicy", mesh, idleTimeout="1s")) == [
        ("spec.targetRef.sectionName", "a Mesh has no sections")
    ]


def test_a_new_policy_kind_is_one_small_class() -> None:
    class RateLimitSpec(PolicySpec):
        requestsPerSecond: int

    class RateLimit(Policy):
        TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset({MESH_TARGET})
        apiVersion: Literal["policy.tulle.dev/v1alpha1"] = "policy.tulle.dev/v1alpha1"
        kind: Literal["RateLimit"] = "RateLimit"
        spec: RateLimitSpec

    ok = RateLimit.model_validate(
        with_(
            _policy("RateLimit", {"group": "mesh.tulle.dev", "kind": "Mesh", "name": "m"}),
            "spec.requestsPerSecond",
            5,
        )
    )
    assert ok.spec.requestsPerSecond == 5
    with pytest.raises(pydantic.ValidationError):
        RateLimit.model_validate(with_(_policy("RateLimit", SERVICE), "spec.requestsPerSecond", 5))
