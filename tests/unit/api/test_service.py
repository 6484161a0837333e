"""Service: Kubernetes Service rules (DNS-1035 name, port names, targetPort) and status.virtualIP."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.service import Service

SVC: dict[str, Any] = {
    "apiVersion": "mesh.tulle.dev/v1alpha1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"},
            {"name": "grpc", "port": 9090, "targetPort": 50051, "appProtocol": "grpc"},
        ],
    },
}


def test_valid_and_status() -> None:
    svc = parse(with_(SVC, "status", {"virtualIP": "240.240.0.1"}))
    assert isinstance(svc, Service)
    assert svc.status is not None and svc.status.virtualIP == "240.240.0.1"
    assert [p.targetPort for p in svc.spec.ports] == ["http", 50051]


def test_rules(errors: Errors) -> None:
    assert errors(with_(SVC, "metadata.name", "1web")) == [
        (
            "metadata.name",
            'must be a DNS-1035 label (lowercase letters, digits and "-", starting with a letter), '
            'at most 63 characters, got "1web"',
        )
    ]
    assert errors(with_(SVC, "spec.ports.1", {"port": 9090})) == [
        ("spec.ports[1].name", "required when a Service has more than one port")
    ]
    assert errors(with_(SVC, "spec.ports", [{"port": 80}])) == []
    assert errors(with_(SVC, "spec.ports", [])) == [("spec.ports", "must have at least 1 items, got 0")]
    assert errors(with_(SVC, "spec.ports.1.targetPort", 0)) == [
        ("spec.ports[1].targetPort", "must be between 1 and 65535, got 0")
    ]
    assert errors(with_(SVC, "spec.ports.1.name", "http")) == [
        ("spec.ports[1].name", 'duplicate port name "http"')
    ]
    assert errors(with_(SVC, "status", {"virtualIP": "nope"})) == [
        ("status.virtualIP", 'must be an IPv4 or IPv6 address, got "nope"')
    ]
    assert errors(with_(SVC, "spec.selector", {"app": "we b"})) != []


def test_ip_family_policy_is_kubernetes_and_single_stack_by_default(errors: Errors) -> None:
    assert parse(SVC).spec.ipFamilyPolicy == "SingleStack"  # type: ignore[attr-defined]
    dual = parse(with_(with_(SVC, "spec.ipFamilyPolicy", "PreferDualStack"), "status",
                       {"virtualIP": "240.240.0.1", "virtualIPv6": "fd74:756c:6c65:7669::1"}))
    assert dual.status.virtualIPv6 == "fd74:756c:6c65:7669::1"  # type: ignore[union-attr]
    got = errors(with_(SVC, "spec.ipFamilyPolicy", "DualStack"))
    assert [p for p, _ in got] == ["spec.ipFamilyPolicy"], got
