"""ReferenceGrant: Gateway API's v1beta1 shape, `from` as written (not `from_`) on the way out."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import errors_of

from tulle.api import parse

GRANT: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
    "metadata": {"name": "g", "namespace": "shop"},
    "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                       "namespace": "web"}],
             "to": [{"group": "", "kind": "Service", "name": "reviews"}]}}


def test_a_grant_round_trips_with_its_field_names() -> None:
    assert parse(GRANT).to_dict()["spec"] == GRANT["spec"]


def test_a_grant_needs_from_and_to() -> None:
    doc = {**GRANT, "spec": {"to": GRANT["spec"]["to"]}}
    assert [p for p, _ in errors_of(doc)] == ["spec.from"]
    doc = {**GRANT, "spec": {**GRANT["spec"], "to": []}}
    assert [p for p, _ in errors_of(doc)] == ["spec.to"]
