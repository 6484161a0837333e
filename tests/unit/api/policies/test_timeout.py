"""TimeoutPolicy: connect/request/per-try/idle/stream-idle durations attached to a Mesh,
Service or route."""

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
        "requestTimeout": "0s",
        "perTryTimeout": "2s",
        "streamIdleTimeout": "1h",
    },
}
SERVICE = {"group": "", "kind": "Service", "name": "web"}


def test_valid() -> None:
    tp = parse(TP)
    assert isinstance(tp, TimeoutPolicy)
    assert tp.spec.targetRef.target == ("gateway.networking.k8s.io", "HTTPRoute")


def test_rules(errors: Errors) -> None:
    only_target = with_(TP, "spec", {"targetRef": TP["spec"]["targetRef"]})
    assert errors(only_target) == [
        ("spec", "set at least one of connectTimeout, requestTimeout, idleTimeout, "
                 "perTryTimeout, streamIdleTimeout")
    ]
    service = with_(TP, "spec.targetRef", SERVICE)
    assert errors(with_(service, "spec.connectTimeout", "0s")) == [
        ("spec.connectTimeout", "must be greater than 0")
    ]
    assert errors(with_(service, "spec.idleTimeout", "1d")) == [
        (
            "spec.idleTimeout",
            'must be a duration such as "10s", "1m30s" or "250ms" (units h, m, s, ms), got "1d"',
        )
    ]
    tcp = with_(
        TP, "spec.targetRef", {"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "name": "db"}
    )
    assert errors(tcp) == [("spec.requestTimeout", "does not apply to a TCPRoute (TCP has no requests)")]
    bare_tcp = with_(with_(with_(tcp, "spec.requestTimeout", None), "spec.perTryTimeout", None),
                     "spec.streamIdleTimeout", None)
    assert errors(with_(bare_tcp, "spec.idleTimeout", "1m")) == []


def test_connection_timeouts_are_a_services(errors: Errors) -> None:
    assert errors(with_(TP, "spec.connectTimeout", "1s")) == [
        ("spec.connectTimeout", "applies to a Service's connections (its cluster), shared by "
                                "every route: target the Service or the Mesh")]
    assert errors(with_(with_(TP, "spec.targetRef", SERVICE), "spec.idleTimeout", "1m")) == []
