"""GRPCRoute: service/method matches and its (smaller) filter set."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.gateway.grpcroute import GRPCRoute

ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "GRPCRoute",
    "metadata": {"name": "ratings"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "ratings", "port": 50051}],
        "rules": [
            {
                "matches": [
                    {
                        "method": {"service": "shop.v1.Ratings", "method": "Get"},
                        "headers": [{"name": "x-v", "value": "2"}],
                    }
                ],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"add": [{"name": "a", "value": "b"}]},
                    }
                ],
                "backendRefs": [{"name": "ratings-v2", "port": 50051, "weight": 5}],
            }
        ],
    },
}


def test_valid() -> None:
    route = parse(ROUTE)
    assert isinstance(route, GRPCRoute)
    assert route.spec.rules[0].matches[0].method.service == "shop.v1.Ratings"  # type: ignore[index,union-attr]


def test_method_match_rules(errors: Errors) -> None:
    m = "spec.rules.0.matches.0.method"
    assert errors(with_(ROUTE, m, {"type": "Exact"})) == [
        ("spec.rules[0].matches[0].method", "one or both of service and method must be set")
    ]
    assert errors(with_(ROUTE, m, {"service": "shop/v1"})) == [
        (
            "spec.rules[0].matches[0].method.service",
            'must be a fully qualified service name (package.Service), got "shop/v1"',
        )
    ]
    assert errors(with_(ROUTE, m, {"method": "Get-It"})) == [
        ("spec.rules[0].matches[0].method.method", 'must be a method name, got "Get-It"')
    ]
    assert errors(with_(ROUTE, m, {"type": "RegularExpression", "method": "Get.*"})) == []


def test_filters_and_limits(errors: Errors) -> None:
    assert errors(with_(ROUTE, "spec.rules.0.filters", [{"type": "URLRewrite", "urlRewrite": {}}])) == [
        (
            "spec.rules[0].filters[0].type",
            'must be "RequestHeaderModifier", "ResponseHeaderModifier", '
            '"RequestMirror" or "ExtensionRef", got "URLRewrite"',
        ),
        ("spec.rules[0].filters[0].urlRewrite", "unknown field"),
    ]
    assert errors(with_(ROUTE, "spec.rules.0.matches", [{"method": {"method": "A"}}] * 9)) == [
        ("spec.rules[0].matches", "must have at most 8 items, got 9")
    ]
    assert errors(with_(ROUTE, "spec.rules.0.backendRefs", [{"name": "x"}])) == [
        ("spec.rules[0].backendRefs[0].port", "required when referring to a Service")
    ]


def test_no_matches_matches_everything() -> None:
    route = parse(with_(ROUTE, "spec.rules.0", {"backendRefs": [{"name": "r", "port": 1}]}))
    assert route.spec.rules[0].matches is None  # type: ignore[attr-defined]


def test_session_persistence_on_a_grpc_rule(errors: Errors) -> None:
    sp = "spec.rules.0.sessionPersistence"
    assert errors(with_(ROUTE, sp, {"type": "Header", "sessionName": "x-session",
                                    "idleTimeout": "30m"})) == []
    assert errors(with_(ROUTE, sp, {"cookieConfig": {"lifetimeType": "Permanent"}})) == [
        ("spec.rules[0].sessionPersistence.absoluteTimeout",
         "required when cookieConfig.lifetimeType is Permanent")]
