"""The compiler's mesh DNS section: emitted for workloads that name a resolver port, with
every Service's virtual IP, shared by reference; nothing changes for the others."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, PartCache, compile_mesh
from tulle.proxyconfig.model import DNSHost


def workload(name: str, ns: str = "shop", dns_port: int | None = None, **labels: str
             ) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": "127.0.0.1",
                            "ports": [{"name": "http", "port": 18080, "targetPort": 19080}]}
    if dns_port is not None:
        spec["dnsPort"] = dns_port
    return {"kind": "Workload", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec}


def service(name: str, ns: str = "shop", vip: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 81, "targetPort": "http"}]}}
    if vip is not None:
        obj["status"] = {"virtualIP": vip}
    return obj


RESOURCES = [workload("web", dns_port=15053, app="web"), workload("catalog", app="catalog"),
             service("catalog", vip="10.96.0.7"), service("web", ns="front", vip="fd00::9"),
             service("pending")]


def test_a_workload_with_a_dns_port_gets_every_service_with_a_vip_once() -> None:
    res = compile_mesh(MeshInputs.from_resources(RESOURCES))
    cfg = res.snapshots[("shop", "web")]
    assert cfg.dns is not None and cfg.dns.port == 15053 and cfg.dns.address == "127.0.0.1"
    # One host per Service (not per port), sorted; `pending` has no VIP yet.
    assert cfg.dns.hosts == [
        DNSHost(service="web", namespace="front", addresses=["fd00::9"]),
        DNSHost(service="catalog", namespace="shop", addresses=["10.96.0.7"])]
    assert cfg.node.namespace == "shop"  # the proxy's search namespace


def test_a_workload_without_one_gets_no_section_and_keeps_its_version() -> None:
    res = compile_mesh(MeshInputs.from_resources(RESOURCES))
    assert res.snapshots[("shop", "catalog")].dns is None
    before = compile_mesh(MeshInputs.from_resources(
        [workload("web", app="web"), *RESOURCES[1:]])).snapshots
    assert before[("shop", "catalog")].version == res.snapshots[("shop", "catalog")].version


def test_a_new_vip_changes_the_resolving_proxys_version_and_shares_the_table() -> None:
    cache = PartCache()
    one = compile_mesh(MeshInputs.from_resources(RESOURCES), cache).snapshots
    more = [*RESOURCES, workload("two", dns_port=15053, app="two"),
            service("extra", vip="10.96.0.8")]
    two = compile_mesh(MeshInputs.from_resources(more), cache).snapshots
    assert two[("shop", "web")].version != one[("shop", "web")].version
    a, b = two[("shop", "web")].dns, two[("shop", "two")].dns
    assert a is not None and b is not None and a.hosts is b.hosts


def test_the_dns_port_may_not_be_a_listener_port() -> None:
    w = workload("web", dns_port=18080, app="web")
    w["spec"]["address"] = "127.0.0.1"
    res = compile_mesh(MeshInputs.from_resources([w]))
    assert ("shop", "web") not in res.snapshots
    assert "dns.port" in res.errors[("shop", "web")]


def test_a_transparent_pod_gets_a_resolver_on_15053_by_default_and_others_do_not() -> None:
    """A pod (`interception: transparent`) has its own loopback and `tulle iptables` sends its
    DNS to 15053, so it gets a resolver there without asking; so does an agent-mode pod (on its
    agent, where `tulle iptables node apply` sends its DNS), naming itself as the client whose
    bare names are its namespace's (ADR 0050); an explicit workload shares the host's loopback:
    it does not."""
    pod = workload("pod", app="pod")
    pod["spec"].update({"address": "10.232.0.5", "interception": "transparent"})
    agent = workload("agented", app="agented")
    agent["spec"].update({"address": "10.232.0.6", "interception": "agent",
                          "outboundPort": 15101, "inboundPort": 15102})
    res = compile_mesh(MeshInputs.from_resources([pod, agent, *RESOURCES]))
    assert not res.errors, res.errors
    cfg = res.snapshots[("shop", "pod")]
    assert cfg.dns is not None and cfg.dns.port == 15053
    assert [h.service for h in cfg.dns.hosts] == ["web", "catalog"]
    agented = res.snapshots[("shop", "agented")].dns
    assert agented is not None and agented.port == 15053 and agented.hosts is cfg.dns.hosts
    assert [(c.address, c.namespace) for c in agented.clients] == [("10.232.0.6", "shop")]
    assert not cfg.dns.clients
    assert res.snapshots[("shop", "catalog")].dns is None  # explicit, no dnsPort


def test_a_dual_stack_service_answers_both_vips_and_a_single_stack_one_only_its_ipv4() -> None:
    """ADR 0088: AAAA gets `status.virtualIPv6` only while the policy is dual-stack (a stale
    one left in the status after a return to SingleStack is not answered)."""
    dual = service("catalog", vip="240.240.0.7")
    dual["spec"]["ipFamilyPolicy"] = "RequireDualStack"
    dual["status"]["virtualIPv6"] = "fd74:756c:6c65:7669::7"
    stale = service("stock", vip="240.240.0.8")
    stale["status"]["virtualIPv6"] = "fd74:756c:6c65:7669::8"
    res = compile_mesh(MeshInputs.from_resources([workload("web", dns_port=15053), dual, stale]))
    cfg = res.snapshots[("shop", "web")]
    assert cfg.dns is not None and cfg.dns.hosts == [
        DNSHost(service="catalog", namespace="shop",
                addresses=["240.240.0.7", "fd74:756c:6c65:7669::7"]),
        DNSHost(service="stock", namespace="shop", addresses=["240.240.0.8"])]
