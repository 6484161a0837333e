"""RetryPolicy: retries attached to a Mesh, Service or route (rule); bad values refused with
their field paths."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.policies.retry import RetryPolicy

RP: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1",
    "kind": "RetryPolicy",
    "metadata": {"name": "r", "namespace": "shop"},
    "spec": {
        "targetRef": {"group": "", "kind": "Service", "name": "web"},
        "attempts": 3,
        "retryOn": ["gateway-error", "reset"],
        "statusCodes": [409],
        "grpcStatuses": ["Unavailable"],
        "backoff": {"baseInterval": "10ms", "maxInterval": "1s"},
        "nonIdempotent": False,
        "maxReplayBytes": 1024,
        "budget": {"percent": 25, "minRetriesPerSecond": 5, "ttl": "20s"},
    },
}
ROUTE = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r",
         "sectionName": "checkout"}


def test_valid() -> None:
    rp = parse(RP)
    assert isinstance(rp, RetryPolicy) and rp.spec.attempts == 3


def test_bad_values_name_their_path(errors: Errors) -> None:
    assert errors(with_(RP, "spec", {"targetRef": RP["spec"]["targetRef"]}))[0][1].startswith(
        "set at least one of attempts")
    assert errors(with_(RP, "spec.attempts", 11))[0][0] == "spec.attempts"
    assert errors(with_(RP, "spec.retryOn", ["sometimes"]))[0][0] == "spec.retryOn[0]"
    assert errors(with_(RP, "spec.grpcStatuses", ["Fine"]))[0][0] == "spec.grpcStatuses[0]"
    assert errors(with_(RP, "spec.budget.percent", 101))[0][0] == "spec.budget.percent"
    assert errors(with_(RP, "spec.backoff", {"baseInterval": "1s", "maxInterval": "10ms"})) == [
        ("spec.backoff.maxInterval", "must be at least baseInterval and at most 10m")]
    assert errors(with_(RP, "spec.backoff", {"baseInterval": "0s"})) == [
        ("spec.backoff.baseInterval", "must be between 1ms and 1m")]


def test_a_budget_is_a_services_not_a_routes(errors: Errors) -> None:
    on_route = with_(RP, "spec.targetRef", ROUTE)
    assert errors(on_route) == [("spec.budget", "a retry budget is a Service's (shared by every "
                                 "route to it): target the Service or the Mesh")]
    assert errors(with_(on_route, "spec.budget", None)) == []
