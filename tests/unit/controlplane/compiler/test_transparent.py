"""The listeners of `interception: transparent` workloads (compiler/transparent.py, ADR 0044):
what the outbound one routes by original destination, the inbound one's chains per port, and
what stays as it was for explicit workloads."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tulle.controlplane.compiler import MeshInputs, PartCache, compile_mesh
from tulle.controlplane.compiler.inbound_protocols import declared_by_services
from tulle.proxyconfig.model import Listener, ProxyConfig


def workload(name: str, address: str, ports: list[dict[str, Any]], ns: str = "shop",
             app: str = "", transparent: bool = True, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app or name}},
            "spec": {"address": address, "ports": ports,
                     **({"interception": "transparent"} if transparent else {}), **spec}}


def service(name: str, app: str, ports: list[dict[str, Any]], vip: str,
            ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": app}, "ports": ports},
            "status": {"virtualIP": vip}}


def mesh_resource(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": spec}


def compiled(*resources: dict[str, Any]) -> dict[str, ProxyConfig]:
    result = compile_mesh(MeshInputs.from_resources(list(resources)))
    assert not result.errors, result.errors
    return {f"{ns}/{name}": cfg for (ns, name), cfg in result.snapshots.items()}


def listener(cfg: ProxyConfig, name: str) -> Listener:
    return next(lst for lst in cfg.listeners if lst.name == name)


BASE = (
    workload("client", "10.0.0.2", []),
    workload("web-0", "10.0.0.3", [{"port": 8080}, {"name": "tcp-db", "port": 5432}]),
    service("web", "web-0", [{"port": 80, "targetPort": 8080, "appProtocol": "http"}],
            "240.240.0.1"),
    service("db", "web-0", [{"port": 5432, "appProtocol": "tcp"}], "240.240.0.2"),
)


def test_the_outbound_listener_routes_by_original_destination() -> None:
    cfg = compiled(*BASE)["shop/client"]
    out = listener(cfg, "outbound")
    assert (out.mode, out.address, out.port, out.passthrough) == (
        "transparent", "127.0.0.1", 15001, True)  # ALLOW_ANY is the default
    by_dst = {(d.address, d.port): d for d in out.destinations}
    web = by_dst[("240.240.0.1", 80)]
    assert (web.protocol, web.route_table, web.cluster) == ("http1", "outbound|web.shop:80", "")
    # The Service's own table, answering any Host: the VIP chose the Service, not the header.
    table = next(t for t in cfg.route_tables if t.name == web.route_table)
    assert [vh.domains for vh in table.virtual_hosts] == [["*"]]
    assert table.virtual_hosts[0].rules[0].backends[0].cluster == "outbound|80||web.shop"
    db = by_dst[("240.240.0.2", 5432)]
    assert (db.protocol, db.cluster) == ("tcp", "outbound-tcp|5432||db.shop")
    tcp = next(c for c in cfg.clusters if c.name == db.cluster)
    assert tcp.protocol == "tcp" and tcp.tls is not None and tcp.tls.alpn == ["tulle-tcp"]
    # A pod IP goes to that pod, on its own port, over mTLS expecting its own identity.
    pod = by_dst[("10.0.0.3", 8080)]
    pod_cluster = next(c for c in cfg.clusters if c.name == pod.cluster)
    assert [(e.address, e.port) for e in pod_cluster.endpoints] == [("10.0.0.3", 8080)]
    assert pod_cluster.tls is not None
    assert pod_cluster.tls.expected_spiffe_ids == ["spiffe://cluster.local/ns/shop/sa/default"]
    # No explicit listener beside it (it would take 127.0.0.1:15001 too).
    assert [lst.name for lst in cfg.listeners] == ["outbound"]


def test_registry_only_refuses_what_is_not_in_the_mesh() -> None:
    cfg = compiled(mesh_resource(outboundTrafficPolicy={"mode": "REGISTRY_ONLY"}),
                   *BASE)["shop/client"]
    assert listener(cfg, "outbound").passthrough is False


def test_a_workload_without_mtls_is_called_in_plaintext_by_pod_ip() -> None:
    cfg = compiled(*BASE, workload("legacy", "10.0.0.9", [{"port": 80}], sidecar=False)
                   )["shop/client"]
    dst = next(d for d in listener(cfg, "outbound").destinations if d.address == "10.0.0.9")
    assert next(c for c in cfg.clusters if c.name == dst.cluster).tls is None


def test_explicit_workloads_are_unchanged() -> None:
    explicit = [workload("client", "127.0.0.2", [], transparent=False), *BASE[1:]]
    with_transparent = compiled(*BASE, workload("other", "127.0.0.3", [], transparent=False))
    alone = compiled(*explicit)
    assert [lst.name for lst in alone["shop/client"].listeners] == ["outbound"]
    assert listener(alone["shop/client"], "outbound").mode == "explicit"
    other = with_transparent["shop/other"]
    assert listener(other, "outbound").mode == "explicit"
    assert not any(c.name.startswith(("pod|", "outbound-tcp|")) for c in other.clusters)
    assert [t.name for t in other.route_tables] == ["outbound"]


def test_the_inbound_listener_takes_each_port_by_destination_port_with_its_mtls() -> None:
    cfg = compiled(*BASE)["shop/web-0"]
    inbound = listener(cfg, "inbound")
    assert (inbound.mode, inbound.address, inbound.port, inbound.passthrough) == (
        "transparent", "0.0.0.0", 15006, False)
    chains = {c.name: c for c in inbound.filter_chains}
    assert sorted(chains) == ["5432|mtls", "8080|mtls"]  # STRICT: mTLS only; no other port
    http = chains["8080|mtls"]
    assert (http.match.destination_port, http.match.transport, http.protocol, http.cluster) == (
        8080, "tls", "http1", "inbound|8080")  # http1: from the Service's appProtocol
    assert http.tls is not None and http.tls.trust_bundle == "mesh"
    assert chains["5432|mtls"].protocol == "tcp"
    assert inbound.opaque_ports == [5432]
    assert not any(lst.name.startswith("inbound|") for lst in cfg.listeners)


def test_permissive_ports_get_a_plaintext_chain_too() -> None:
    cfg = compiled(mesh_resource(mtls={"mode": "PERMISSIVE"}), *BASE)["shop/web-0"]
    names = sorted(c.name for c in listener(cfg, "inbound").filter_chains)
    assert names == ["5432|mtls", "5432|plaintext", "8080|mtls", "8080|plaintext"]


def test_consumer_routes_reach_only_their_own_namespace() -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "mine", "namespace": "front"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "web", "namespace": "shop",
                                      "port": 80}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix",
                                                       "value": "/front-only"}}]}]}}
    snaps = compiled(*BASE, workload("front", "10.0.0.5", [], ns="front"), route)

    def rules(key: str) -> list[str]:
        table = next(t for t in snaps[key].route_tables if t.name == "outbound|web.shop:80")
        assert table.virtual_hosts[0].domains == ["*"]
        return [r.name for r in table.virtual_hosts[0].rules]

    assert rules("front/front") == ["httproute/front/mine/0"]
    assert rules("shop/client") == ["default/shop/web/80"]
    assert snaps["front/front"].version != snaps["shop/client"].version


def test_a_tcproute_splits_by_backend_weight_whatever_the_endpoint_counts() -> None:
    pods = [workload(f"a-{i}", f"10.0.1.{i}", [{"name": "tcp", "port": 9000}], app="a")
            for i in range(2)] + [
            workload(f"b-{i}", f"10.0.2.{i}", [{"name": "tcp", "port": 9000}], app="b")
            for i in range(3)]
    route = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
             "metadata": {"name": "split", "namespace": "shop"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "echo", "port": 9000}],
                      "rules": [{"backendRefs": [{"name": "a", "port": 9000, "weight": 1},
                                                 {"name": "b", "port": 9000, "weight": 1}]}]}}
    cfg = compiled(
        workload("client", "10.0.0.2", []), *pods, route,
        service("echo", "none", [{"port": 9000, "appProtocol": "tcp"}], "240.240.0.9"),
        service("a", "a", [{"port": 9000, "appProtocol": "tcp"}], "240.240.0.10"),
        service("b", "b", [{"port": 9000, "appProtocol": "tcp"}], "240.240.0.11"),
    )["shop/client"]
    echo = next(c for c in cfg.clusters if c.name == "outbound-tcp|9000||echo.shop")
    weights = {e.address: e.weight for e in echo.endpoints}
    assert weights == {"10.0.1.0": 3, "10.0.1.1": 3, "10.0.2.0": 2, "10.0.2.1": 2,
                       "10.0.2.2": 2}  # 6 and 6: one half each
    assert echo.tls is not None and echo.tls.alpn == ["tulle-tcp"]


def test_a_consumer_tcproute_decides_for_its_own_namespace_only() -> None:
    """A TCPRoute in `front` on Service `db` of `shop` sends front's clients to `db-v2`;
    shop's clients keep the producer's default (every db endpoint), and their snapshot's
    version does not move because front has a consumer route."""
    pods = [workload("db-0", "10.0.1.1", [{"name": "tcp", "port": 5432}], app="db"),
            workload("db2-0", "10.0.2.1", [{"name": "tcp", "port": 5432}], app="db2")]
    services = [service("db", "db", [{"port": 5432, "appProtocol": "tcp"}], "240.240.0.20"),
                service("db-v2", "db2", [{"port": 5432, "appProtocol": "tcp"}],
                        "240.240.0.21")]
    clients = [workload("client", "10.0.0.2", []),
               workload("front", "10.0.0.4", [], ns="front")]
    route = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
             "metadata": {"name": "to-v2", "namespace": "front"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "db", "namespace": "shop",
                                      "port": 5432}],
                      "rules": [{"backendRefs": [{"name": "db-v2", "namespace": "shop",
                                                 "port": 5432}]}]}}
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "front-db", "namespace": "shop"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute",
                                "namespace": "front"}],
                      "to": [{"group": "", "kind": "Service"}]}}
    without = compiled(*pods, *services, *clients, grant)
    snaps = compiled(*pods, *services, *clients, grant, route)

    def db(key: str) -> list[str]:
        c = next(c for c in snaps[key].clusters if c.name == "outbound-tcp|5432||db.shop")
        return [e.address for e in c.endpoints]

    assert db("front/front") == ["10.0.2.1"]
    assert db("shop/client") == ["10.0.1.1"]
    assert snaps["shop/client"].version == without["shop/client"].version
    assert snaps["front/front"].version != without["front/front"].version


@pytest.mark.parametrize(("declared", "expected"), [
    ([("http", "http")], "http1"),
    ([("grpc", "grpc")], "http2"),
    ([("http", "web"), ("grpc", "api")], "auto"),   # Services disagree: sniffed
    ([(None, "web")], "auto"),                      # nothing declared
])
def test_an_undeclared_workload_port_takes_its_services_protocol(
        declared: list[tuple[str | None, str]], expected: str) -> None:
    services = [service(name, "web-0", [{"port": 80 + i, "targetPort": 8080,
                                         **({"appProtocol": proto} if proto else {})}],
                        f"240.240.0.{i + 1}")
                for i, (proto, name) in enumerate(declared)]
    cfg = compiled(workload("web-0", "10.0.0.3", [{"port": 8080}]), *services)["shop/web-0"]
    chain = listener(cfg, "inbound").filter_chains[0]
    assert chain.protocol == expected


def test_the_workload_port_s_own_protocol_wins() -> None:
    cfg = compiled(workload("web-0", "10.0.0.3", [{"port": 8080, "appProtocol": "tcp"}]),
                   service("web", "web-0", [{"port": 80, "targetPort": 8080,
                                             "appProtocol": "http"}], "240.240.0.1"))
    assert listener(cfg["shop/web-0"], "inbound").filter_chains[0].protocol == "tcp"


def test_service_protocols_only_when_declared() -> None:
    m = MeshInputs.from_resources([*BASE])
    from tulle.controlplane.compiler import derive

    assert declared_by_services(derive(m).services) == {
        (("shop", "web-0"), 8080): "http1", (("shop", "web-0"), 5432): "tcp"}


def test_incremental_compilation_gives_the_same_snapshots() -> None:
    cache = PartCache()
    first = compile_mesh(MeshInputs.from_resources(list(BASE)), cache)
    again = compile_mesh(MeshInputs.from_resources(list(BASE)), cache)
    fresh = compile_mesh(MeshInputs.from_resources(list(BASE)))
    for key, cfg in fresh.snapshots.items():
        assert msgspec.json.encode(first.snapshots[key]) == msgspec.json.encode(cfg)
        assert msgspec.json.encode(again.snapshots[key]) == msgspec.json.encode(cfg)


def test_loopback_workloads_are_no_pod_destinations() -> None:
    cfg = compiled(*BASE, workload("local", "127.0.0.1", [{"port": 18080}],
                                   transparent=False))["shop/client"]
    assert not any(d.address == "127.0.0.1" for d in listener(cfg, "outbound").destinations)
    assert not any(c.name == "pod|18080||local.shop" for c in cfg.clusters)


def test_a_sidecar_listens_for_both_families_where_ip6tables_redirects() -> None:
    """ADR 0088: outbound and DNS on `::1` too (ip6tables' REDIRECT from OUTPUT), inbound on
    both wildcards (REDIRECT from PREROUTING: the interface's first address; and an edited
    Workload address changes nothing the listener binds)."""
    cfgs = compiled(*BASE, workload("v6", "fd00::5", [{"port": 8080}], dnsPort=15053))
    client, web = cfgs["shop/client"], cfgs["shop/web-0"]
    assert listener(client, "outbound").additional_addresses == ["::1"]
    assert client.dns is not None and client.dns.additional_addresses == ["::1"]
    for cfg in (web, cfgs["shop/v6"]):  # the wildcards, whatever the pod's address
        assert (listener(cfg, "inbound").address,
                listener(cfg, "inbound").additional_addresses) == ("0.0.0.0", ["::"])


def test_explicit_and_agent_workloads_listen_on_one_address() -> None:
    """An explicit proxy's listeners are its own business; a node agent steers IPv4 only and
    refuses its pods' IPv6 (ADR 0050), so nothing of theirs binds IPv6."""
    cfgs = compiled(*BASE,
                    workload("plain", "10.0.0.7", [{"port": 8080}], transparent=False),
                    workload("pod", "10.0.0.8", [{"port": 8080}], transparent=False,
                             interception="agent", outboundPort=15101, inboundPort=15102))
    for name in ("shop/plain", "shop/pod"):
        assert [lst.additional_addresses for lst in cfgs[name].listeners] == [
            [] for _ in cfgs[name].listeners], name
    assert cfgs["shop/pod"].dns is not None and cfgs["shop/pod"].dns.additional_addresses == []


def test_a_dual_stack_pods_other_address_is_the_same_pod_ip_destination() -> None:
    """A call to the pod's IPv6 address goes to the pod as one to its IPv4 address does:
    same cluster (dialled at `address`), same mTLS identity expected."""
    cfgs = compiled(*BASE[:1], workload("web-0", "10.0.0.3", [{"port": 8080}],
                                        additionalAddresses=["fd00::3"]), *BASE[2:])
    out = listener(cfgs["shop/client"], "outbound")
    pods = {(d.address, d.port): d.cluster for d in out.destinations
            if d.cluster.startswith("pod|")}
    assert pods == {("10.0.0.3", 8080): "pod|8080||web-0.shop",
                    ("fd00::3", 8080): "pod|8080||web-0.shop"}


def test_a_dual_stack_services_ipv6_vip_takes_the_same_routes() -> None:
    web, db = BASE[2], BASE[3]
    web6 = {**web, "spec": {**web["spec"], "ipFamilyPolicy": "PreferDualStack"},
            "status": {"virtualIP": "240.240.0.1", "virtualIPv6": "fd74:756c:6c65:7669::1"}}
    db6 = {**db, "spec": {**db["spec"], "ipFamilyPolicy": "PreferDualStack"},
           "status": {"virtualIP": "240.240.0.2", "virtualIPv6": "fd74:756c:6c65:7669::2"}}
    out = listener(compiled(BASE[0], BASE[1], web6, db6)["shop/client"], "outbound")
    by_address = {(d.address, d.port): (d.route_table, d.cluster) for d in out.destinations}
    assert by_address[("fd74:756c:6c65:7669::1", 80)] == by_address[("240.240.0.1", 80)] == (
        "outbound|web.shop:80", "")
    assert by_address[("fd74:756c:6c65:7669::2", 5432)] == by_address[("240.240.0.2", 5432)] \
        == ("", "outbound-tcp|5432||db.shop")


def test_a_node_agents_pod_listener_takes_that_pods_addresses_only() -> None:
    # ADR 0098: the listener lends the pod's identity; a sidecar's lives in the pod itself.
    cfgs = compiled(*BASE,
                    workload("pod", "10.0.0.8", [{"port": 8080}], transparent=False,
                             interception="agent", outboundPort=15101, inboundPort=15102,
                             additionalAddresses=["fd00::8"]))
    out = listener(cfgs["shop/pod"], "outbound")
    assert out.sources == ["10.0.0.8", "fd00::8"]
    assert listener(cfgs["shop/client"], "outbound").sources == []


def _agent(name: str, address: str, ports: list[dict[str, Any]], n: int,
           **spec: Any) -> dict[str, Any]:
    return workload(name, address, ports, transparent=False, interception="agent",
                    outboundPort=15100 + n, inboundPort=15200 + n, **spec)


AGENT_PODS = (_agent("pod-a", "10.232.0.2", [], 1),
              _agent("api", "10.232.0.4", [{"port": 8080}], 3, additionalAddresses=["fd00::4"]))


def test_an_agents_pod_listener_refuses_an_agent_pods_undeclared_ports_after_its_own() -> None:
    """ADR 0114: under ALLOW_ANY a node agent passes an unknown destination through from the
    node, so a same-node pod's inbound side never sees it.  Every agent-mode workload's
    address is refused after the pod-IP destinations (the ports it declares), whatever the
    port; a sidecar's address is not (its own inbound side closes an undeclared port)."""
    cfgs = compiled(*BASE, *AGENT_PODS)
    out = listener(cfgs["shop/pod-a"], "outbound")
    assert out.passthrough
    tail = [(d.address, d.port, d.refuse, d.cluster) for d in out.destinations[-3:]]
    assert tail == [("10.232.0.4", 0, True, ""), ("fd00::4", 0, True, ""),
                    ("10.232.0.2", 0, True, "")]  # by namespace and name
    first = {(d.address, d.port): i for i, d in reversed(list(enumerate(out.destinations)))}
    # api's declared port is taken first, by its pod-IP destination (mTLS to its listener).
    assert first[("10.232.0.4", 8080)] < first[("10.232.0.4", 0)]
    assert out.destinations[first[("10.232.0.4", 8080)]].cluster == "pod|8080||api.shop"
    # A sidecar pod's address (web-0) and a Service VIP are not refused; anything else
    # still passes through.
    assert not any(d.refuse and d.address in ("10.0.0.3", "240.240.0.1")
                   for d in out.destinations)
    # Only a node agent's pod listeners carry them: a sidecar's listener is unchanged.
    client = listener(cfgs["shop/client"], "outbound")
    assert not any(d.refuse for d in client.destinations)


def test_registry_only_needs_no_refusal_and_adding_an_agent_pod_changes_the_version() -> None:
    strict = compiled(mesh_resource(outboundTrafficPolicy={"mode": "REGISTRY_ONLY"}),
                      *BASE, *AGENT_PODS)
    assert not any(d.refuse for d in listener(strict["shop/pod-a"], "outbound").destinations)
    one = compiled(*BASE, *AGENT_PODS)["shop/pod-a"]
    more = compiled(*BASE, *AGENT_PODS, _agent("pod-c", "10.232.0.9", [], 5))["shop/pod-a"]
    assert ("10.232.0.9", True) in [(d.address, d.refuse)
                                    for d in listener(more, "outbound").destinations]
    assert one.version != more.version
