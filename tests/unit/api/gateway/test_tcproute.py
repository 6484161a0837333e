"""TCPRoute: v1alpha2 as upstream serves it; rules are weighted backends only."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.gateway.tcproute import TCPRoute

ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1alpha2",
    "kind": "TCPRoute",
    "metadata": {"name": "db"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "db", "port": 5432}],
        "rules": [
            {"backendRefs": [{"name": "db-a", "port": 5432, "weight": 3}, {"name": "db-b", "port": 5432}]}
        ],
    },
}


def test_valid() -> None:
    route = parse(ROUTE)
    assert isinstance(route, TCPRoute)
    assert [b.weight for b in route.spec.rules[0].backendRefs] == [3, 1]


def test_rules(errors: Errors) -> None:
    assert errors(with_(ROUTE, "spec.rules", [])) == [("spec.rules", "must have at least 1 items, got 0")]
    assert errors(with_(ROUTE, "spec.rules.0.backendRefs", [])) == [
        ("spec.rules[0].backendRefs", "must have at least 1 items, got 0")
    ]
    assert errors(with_(ROUTE, "spec.rules.0.matches", [])) == [("spec.rules[0].matches", "unknown field")]


def test_only_v1alpha2(errors: Errors) -> None:
    assert errors(with_(ROUTE, "apiVersion", "gateway.networking.k8s.io/v1")) == [
        (
            "kind",
            "kind TCPRoute is served as apiVersion "
            'gateway.networking.k8s.io/v1alpha2, not "gateway.networking.k8s.io/v1"',
        )
    ]
