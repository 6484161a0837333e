"""TimeoutPolicy: connect/request/idle durations attached to a Mesh, Service or route."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.policies.timeout import TimeoutPolicy

TP: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1",
    "kind": "TimeoutPolicy",
    "metadata": {"name": "t"},
    "spec": {
        "targetRef": {
            "group": "gateway.networking.k8s.io",
            "kind": "HTTPRoute",
            "name": "r",
            "sectionName": "main",
        },
        "connectTimeout": "250ms",
        "requestTimeout": "0s",
        "idleTimeout": "1h",
    },
}


def test_valid() -> None:
    tp = parse(TP)
    assert isinstance(tp, TimeoutPolicy)
    assert tp.spec.targetRef.target == ("gateway.networking.k8s.io", "HTTPRoute")


def test_rules(errors: Errors) -> None:
    only_target = with_(TP, "spec", {"targetRef": TP["spec"]["targetRef"]})
    assert errors(only_target) == [
        ("spec", "set at least one of connectTimeout, requestTimeout, idleTimeout")
    ]
    assert errors(with_(TP, "spec.connectTimeout", "0s")) == [
        ("spec.connectTimeout", "must be greater than 0")
    ]
    assert errors(with_(TP, "spec.idleTimeout", "1d")) == [
        (
            "spec.idleTimeout",
            'must be a duration such as "10s", "1m30s" or "250ms" (units h, m, s, ms), got "1d"',
        )
    ]
    tcp = with_(
        TP, "spec.targetRef", {"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "name": "db"}
    )
    assert errors(tcp) == [("spec.requestTimeout", "does not apply to a TCPRoute (TCP has no requests)")]
    assert errors(with_(tcp, "spec.requestTimeout", None)) == []
