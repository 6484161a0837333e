"""Explain for a transparent caller (ADR 0044): the outbound hop is the destination whose
address:port is the Service's VIP and port, routed by that destination's table (Host does not
choose the Service); an opaque TCP port is a cluster with no HTTP routing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tulle.cli.explain import ExplainError, build_request, explain
from tulle.cli.explain.render import render
from tulle.controlplane.compiler import MeshInputs, compile_mesh
from tulle.proxyconfig.model import ProxyConfig

V1 = "mesh.tulle.dev/v1alpha1"
GW = "gateway.networking.k8s.io/v1"


def workload(name: str, ns: str, address: str, *ports: int, **labels: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"address": address, "interception": "transparent",
                     "ports": [{"port": p} for p in ports]}}


def service(name: str, vip: str, ports: list[dict[str, Any]], vip6: str = "", **selector: str
            ) -> dict[str, Any]:
    doc = {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"selector": selector, "ports": ports}, "status": {"virtualIP": vip}}
    if vip6:  # a dual-stack Service (ADR 0088)
        doc["spec"]["ipFamilyPolicy"] = "PreferDualStack"
        doc["status"]["virtualIPv6"] = vip6
    return doc


VIP6 = "fd74:756c:6c65:7669::1"


ROUTE = {"apiVersion": GW, "kind": "HTTPRoute",
         "metadata": {"name": "split", "namespace": "shop"},
         "spec": {"parentRefs": [{"kind": "Service", "name": "api", "port": 80}],
                  "rules": [
                      {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                       "backendRefs": [{"name": "api-v2", "port": 80}]},
                      {"backendRefs": [{"name": "api", "port": 80, "weight": 3},
                                       {"name": "api-v2", "port": 80, "weight": 1}]}]}}


@pytest.fixture(scope="module")
def snaps() -> dict[tuple[str, str], ProxyConfig]:
    http = [{"port": 80, "targetPort": 8080, "appProtocol": "http"}]
    docs = [{"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"}, "spec": {}},
            workload("client-0", "web", "10.231.0.2"),
            workload("api-0", "shop", "10.231.0.3", 8080, app="api"),
            workload("api2-0", "shop", "10.231.0.4", 8080, app="api2"),
            workload("db-0", "shop", "10.231.0.5", 5432, app="db"),
            service("api", "240.240.0.1", http, vip6=VIP6, app="api"),
            service("api-v2", "240.240.0.2", http, app="api2"),
            service("db", "240.240.0.3", [{"port": 5432, "appProtocol": "tcp"}], app="db"),
            ROUTE]
    res = compile_mesh(MeshInputs.from_resources(docs))
    assert not res.errors, res.errors
    return res.snapshots


def run(snaps: dict[tuple[str, str], ProxyConfig], to: str, path: str = "/") -> dict[str, Any]:
    def lookup(ns: str, name: str) -> tuple[ProxyConfig, str] | None:
        cfg = snaps.get((ns, name))
        return (cfg, "acked") if cfg is not None else None

    def identity_of(ns: str, name: str) -> str:
        return f"spiffe://cluster.local/ns/{ns}/sa/default"

    doc = explain(build_request("web/client-0", "default", to, path, "GET", []), lookup,
                  identity_of)
    msgspec.json.encode(doc)
    return doc


def test_the_caller_has_no_host_routed_table_only_destinations(
        snaps: dict[tuple[str, str], ProxyConfig]) -> None:
    listeners = snaps[("web", "client-0")].listeners
    assert not any(x.route_table for x in listeners if x.direction == "outbound")
    assert any(x.destinations for x in listeners if x.mode == "transparent")


@pytest.mark.parametrize("to", ["api.shop", "api.shop:80", "api.shop.svc.cluster.local",
                                "240.240.0.1:80"])
def test_the_vip_destination_chooses_the_table_and_the_router_the_rule(
        snaps: dict[tuple[str, str], ProxyConfig], to: str) -> None:
    doc = run(snaps, to, "/items")
    out = doc["outbound"]
    od = out["originalDestination"]
    assert (od["address"], od["port"], od["routeTable"]) == (
        "240.240.0.1", 80, "outbound|api.shop:80")
    assert "chosen by original destination 240.240.0.1:80" in od["why"]
    assert out["routeTable"] == "outbound|api.shop:80"
    assert (out["result"], out["ruleIndex"]) == ("matched", 1)
    assert out["notTaken"][0]["why"] == "path PathPrefix '/v2' does not match"
    assert out["backends"] == [
        {"cluster": "outbound|80||api.shop", "weight": 3, "percent": 75.0},
        {"cluster": "outbound|80||api-v2.shop", "weight": 1, "percent": 25.0}]
    eps = [(e["workload"], e["result"], e["mtls"]) for h in doc["hops"] for e in h["endpoints"]]
    assert eps == [("shop/api-0", "forwarded", "mTLS"), ("shop/api2-0", "forwarded", "mTLS")]
    assert doc["hops"][0]["endpoints"][0]["server"]["chain"] == "8080|mtls"
    assert "chosen by original destination" in render(doc)


def test_the_path_rule_of_the_same_table_wins(
        snaps: dict[tuple[str, str], ProxyConfig]) -> None:
    doc = run(snaps, "api.shop", "/v2/x")
    assert doc["outbound"]["ruleIndex"] == 0
    assert [h["cluster"] for h in doc["hops"]] == ["outbound|80||api-v2.shop"]


def test_an_opaque_tcp_port_is_a_cluster_with_no_http_routing(
        snaps: dict[tuple[str, str], ProxyConfig]) -> None:
    doc = run(snaps, "db.shop:5432")
    out = doc["outbound"]
    assert out["originalDestination"]["address"] == "240.240.0.3"
    assert out["result"] == "tcp"
    assert out["why"] == "TCP cluster outbound-tcp|5432||db.shop, no HTTP routing"
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["workload"], ep["relay"], ep["result"]) == ("shop/db-0", "opaque TCP", "forwarded")
    assert "TCP cluster outbound-tcp|5432||db.shop, no HTTP routing" in render(doc)


@pytest.mark.parametrize("to", ["api.shop:8080", "nothing.shop", "api", "240.240.0.9:80"])
def test_no_destination_for_the_service_is_a_404_on_to(
        snaps: dict[tuple[str, str], ProxyConfig], to: str) -> None:
    with pytest.raises(ExplainError) as exc:
        run(snaps, to)  # "api" resolves in the caller's namespace, web: no such Service
    assert (exc.value.status, exc.value.field) == (404, "to")
    assert "no original destination" in exc.value.message


@pytest.mark.parametrize("passthrough", [True, False])
def test_an_unknown_address_says_what_the_outbound_policy_does_with_it(
        snaps: dict[tuple[str, str], ProxyConfig], passthrough: bool) -> None:
    # ALLOW_ANY (the default) compiles passthrough on; REGISTRY_ONLY, off.
    changed = {key: msgspec.structs.replace(cfg, listeners=[
        msgspec.structs.replace(x, passthrough=passthrough) if x.mode == "transparent" else x
        for x in cfg.listeners]) for key, cfg in snaps.items()}
    with pytest.raises(ExplainError) as exc:
        run(changed, "10.231.0.99:15681")
    assert (exc.value.status, exc.value.field) == (404, "to")
    assert "10.231.0.99:15681 (no mesh Service's virtual IP or endpoint)" in exc.value.message
    if passthrough:
        assert "relays it unchanged" in exc.value.message and "ALLOW_ANY" in exc.value.message
    else:
        assert "refuses it: the connection is reset" in exc.value.message
        assert "REGISTRY_ONLY" in exc.value.message


def test_an_agent_mode_caller_and_destination_are_traced_through_the_agent_listeners() -> None:
    """`interception: agent` (ADR 0047): outbound by original destination on the pod's own
    loopback port, inbound on the agent's 127.0.0.1:inboundPort the pod address is DNAT'd to."""
    def agent(name: str, ns: str, address: str, n: int, *ports: int) -> dict[str, Any]:
        w = workload(name, ns, address, *ports, app=name.split("-", maxsplit=1)[0])
        w["spec"].update(interception="agent", outboundPort=15100 + n, inboundPort=15200 + n)
        return w

    docs = [agent("client-0", "web", "10.231.0.2", 1), agent("api-0", "shop", "10.231.0.3", 2, 8080),
            service("api", "240.240.0.1", [{"port": 80, "targetPort": 8080,
                                             "appProtocol": "http"}], app="api")]
    res = compile_mesh(MeshInputs.from_resources(docs))
    assert not res.errors, res.errors
    doc = run(res.snapshots, "api.shop")
    assert doc["outbound"]["originalDestination"]["address"] == "240.240.0.1"
    assert doc["outbound"]["route"] == "default/shop/api/80"
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["server"]["listener"] == "inbound"
    assert ep["server"]["chain"] == "8080|mtls"
    assert (ep["result"], ep["mtls"]) == ("forwarded", "mTLS")


@pytest.mark.parametrize("to", [f"[{VIP6}]:80", f"[{VIP6}]", VIP6,
                                "[fd74:756c:6c65:7669:0::1]:80"])
def test_a_dual_stack_services_ipv6_vip_takes_the_same_table(
        snaps: dict[tuple[str, str], ProxyConfig], to: str) -> None:
    od = run(snaps, to, "/items")["outbound"]["originalDestination"]
    assert (od["address"], od["port"], od["routeTable"]) == (VIP6, 80, "outbound|api.shop:80")
    assert f"chosen by original destination [{VIP6}]:80" in od["why"]


@pytest.mark.parametrize(("to", "why"), [
    ("[zz::1]:80", "is not SERVICE[.NAMESPACE][:PORT], ADDRESS[:PORT] or [IPV6-ADDRESS][:PORT]"),
    ("[::1]:http", "is not SERVICE"), ("api.shop:x", "is not SERVICE"),
    ("[::1]:70000", "port 70000 is out of range"), ("[1:2]:80", "is not an IPv6 address"),
    (":::", "is not an IPv6 address"), ("a:b:c", "is not an IPv6 address"),
    (":" * 3000 + "g", "longer than 259 characters")])
def test_a_malformed_address_is_a_400_on_to(
        snaps: dict[tuple[str, str], ProxyConfig], to: str, why: str) -> None:
    with pytest.raises(ExplainError) as exc:
        run(snaps, to)
    assert (exc.value.status, exc.value.field) == (400, "to")
    assert why in exc.value.message


def test_an_unknown_ipv6_address_is_written_with_brackets(
        snaps: dict[tuple[str, str], ProxyConfig]) -> None:
    with pytest.raises(ExplainError) as exc:
        run(snaps, "[fd00:231::99]:7000")
    assert "is [fd00:231::99]:7000 (no mesh Service's virtual IP or endpoint)" in (
        exc.value.message)



def test_an_agent_pods_undeclared_port_is_explained_as_refused_not_passed_through() -> None:
    """ADR 0114: under ALLOW_ANY a node agent's pod listener refuses an agent-mode pod's
    address on a port the pod does not declare; explain says so and why, where it used to
    say the call is relayed unchanged.  The declared port is still traced to the pod."""
    def agent(name: str, ns: str, address: str, n: int, *ports: int) -> dict[str, Any]:
        w = workload(name, ns, address, *ports, app=name.split("-", maxsplit=1)[0])
        w["spec"].update(interception="agent", outboundPort=15100 + n, inboundPort=15200 + n)
        return w

    res = compile_mesh(MeshInputs.from_resources([
        agent("client-0", "web", "10.231.0.2", 1), agent("api-0", "shop", "10.231.0.3", 2, 8080)]))
    assert not res.errors, res.errors
    with pytest.raises(ExplainError) as exc:
        run(res.snapshots, "10.231.0.3:9000")
    assert (exc.value.status, exc.value.field) == (403, "to")
    assert "10.231.0.3:9000 is a meshed workload's address on a port it does not declare" in (
        exc.value.message)
    assert 'kind="destination_refused"' in exc.value.message
    doc = run(res.snapshots, "10.231.0.3:8080")
    assert doc["outbound"]["originalDestination"]["cluster"] == "pod|8080||api-0.shop"
    # Anything that is no mesh workload's address is still relayed unchanged.
    with pytest.raises(ExplainError) as exc:
        run(res.snapshots, "10.231.0.99:15681")
    assert "relays it unchanged" in exc.value.message
