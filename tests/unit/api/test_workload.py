"""Workload: address, ports with appProtocol, service account, zone; labels in metadata."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.workload import Workload

WL: dict[str, Any] = {
    "apiVersion": "mesh.tulle.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {
        "address": "fd00::1",
        "serviceAccount": "web",
        "zone": "zone-a",
        "ports": [
            {"name": "http", "port": 8080, "appProtocol": "http"},
            {"name": "h2c", "port": 8081, "appProtocol": "kubernetes.io/h2c"},
        ],
    },
}


def test_valid() -> None:
    wl = parse(WL)
    assert isinstance(wl, Workload)
    assert wl.spec.ports[0].protocol == "TCP"
    assert parse(with_(WL, "spec", {"address": "10.1.2.3"})).spec.serviceAccount == "default"  # type: ignore[attr-defined]


def test_rules(errors: Errors) -> None:
    assert errors(with_(WL, "spec.address", "10.0.0")) == [
        ("spec.address", 'must be an IPv4 or IPv6 address, got "10.0.0"')
    ]
    assert errors(with_(WL, "spec.ports.1.name", "http")) == [
        ("spec.ports[1].name", 'duplicate port name "http"')
    ]
    assert errors(with_(WL, "spec.ports.1.port", 8080)) == [("spec.ports[1].port", "duplicate port 8080/TCP")]
    assert errors(with_(WL, "spec.ports.0.port", 70000)) == [
        ("spec.ports[0].port", "must be <= 65535, got 70000")
    ]
    assert errors(with_(WL, "spec.ports.0.protocol", "tcp")) == [
        ("spec.ports[0].protocol", 'must be "TCP", "UDP" or "SCTP", got "tcp"')
    ]
    [(path, msg)] = errors(with_(WL, "spec.ports.0.name", "http--alt"))
    assert (path, msg.startswith("must be an IANA service name")) == ("spec.ports[0].name", True)
    [(path, _)] = errors(with_(WL, "spec.zone", "zone a"))
    assert path == "spec.zone"
    assert errors(with_(WL, "spec.address", None)) == [("spec.address", "must be a string, got null")]
    no_address = with_(WL, "spec", {"ports": []})
    assert errors(no_address) == [("spec.address", "required")]


def test_weight_is_1_by_default_and_0_is_refused(errors: Errors) -> None:
    assert parse(WL).spec.weight == 1  # type: ignore[attr-defined]
    assert parse(with_(WL, "spec.weight", 5)).spec.weight == 5  # type: ignore[attr-defined]
    got = errors(with_(WL, "spec.weight", 0))
    assert [p for p, _ in got] == ["spec.weight"], got


def test_agent_interception_and_its_inbound_port(errors: Errors) -> None:
    wl = parse(with_(WL, "spec", {"address": "10.232.0.4", "interception": "agent",
                                  "outboundPort": 15003, "inboundPort": 15103}))
    assert wl.spec.inboundPort == 15103  # type: ignore[attr-defined]
    assert errors(with_(WL, "spec.inboundPort", 15103)) == [
        ("spec.inboundPort", "only with interception: agent (a sidecar takes inbound traffic "
                             "on 15006)")]
    assert errors(with_(WL, "spec.interception", "node"))[0][0] == "spec.interception"


def test_a_dual_stack_pod_names_its_other_family_once(errors: Errors) -> None:
    wl = parse(with_(WL, "spec.additionalAddresses", ["10.232.0.4"]))
    assert wl.spec.additionalAddresses == ["10.232.0.4"]  # type: ignore[attr-defined]
    assert errors(with_(WL, "spec.additionalAddresses", ["fd00::2"])) == [
        ("spec.additionalAddresses[0]", '"fd00::2" is of the same family as address "fd00::1": '
                                        "a pod has one address per family")]
    assert errors(with_(WL, "spec.additionalAddresses", ["10.0.0"]))[0][0] == (
        "spec.additionalAddresses[0]")
    got = errors(with_(WL, "spec.additionalAddresses", ["10.0.0.1", "10.0.0.2"]))
    assert [p for p, _ in got] == ["spec.additionalAddresses"], got
    v4 = with_(WL, "spec.address", "10.0.0.3")
    for bad, why in [("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"),
                     ("::ffff:10.0.0.3", "IPv4-mapped"), ("ff02::1", "multicast")]:
        [(path, msg)] = errors(with_(v4, "spec.additionalAddresses", [bad]))
        assert path == "spec.additionalAddresses[0]" and why in msg, (bad, msg)
    assert errors(with_(v4, "spec.additionalAddresses", ["fd00::3"])) == []
    [(path, msg)] = errors(with_(WL, "spec.additionalAddresses", ["127.0.0.1"]))
    assert "loopback" in msg


def test_a_workload_address_in_the_ipv4_mapped_form_is_refused(errors: Errors) -> None:
    """Peers and original destinations are compared as IPv4, so `::ffff:10.0.0.3` would name
    no pod: refused with the IPv4 address to give instead."""
    assert errors(with_(WL, "spec.address", "::ffff:10.0.0.3")) == [
        ("spec.address", '"::ffff:10.0.0.3" is an IPv4-mapped address: give the IPv4 '
                         "address (10.0.0.3)")]
