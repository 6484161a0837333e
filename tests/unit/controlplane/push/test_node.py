"""A node fronting several workloads gets one snapshot: the compiler's per-workload snapshots
merged, shared parts once, clashing names made unique with their references, each listener
and inbound cluster naming its workload."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from tests.support.resources import service

from tulle.controlplane.compiler import MeshInputs, PartCache, check_compiled, compile_mesh
from tulle.controlplane.push.node import NodeError, NodeSnapshots, merge
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.validate import check

NS = "shop"


def workload(name: str, address: str, port: int, outbound: int, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"address": address, "outboundPort": outbound,
                     "ports": [{"name": "http", "port": port, "targetPort": 9000}]}}


def compiled(*extra: dict[str, Any], cache: PartCache | None = None) -> dict[Any, ProxyConfig]:
    docs = [service("web", app="web"), service("api", app="api"),
            workload("web-0", "127.0.0.2", 8080, 15001, app="web"),
            workload("api-0", "127.0.0.3", 8080, 15002, app="api"),
            workload("db-0", "127.0.0.4", 5432, 15003, app="db"), *extra]
    return dict(compile_mesh(MeshInputs.from_resources(docs), cache).snapshots)


PLAINTEXT = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
             "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "DISABLED"}}}
"""Without mTLS the workloads' outbound parts are equal and shared (with it, each workload
presents its own certificate and gets its own: the test after this one)."""


def test_two_workloads_share_one_snapshot_that_the_proxy_takes() -> None:
    snaps = compiled(PLAINTEXT)
    web, api = (NS, "web-0"), (NS, "api-0")
    node = merge([(web, snaps[web]), (api, snaps[api])])
    check_compiled(node)  # valid as one proxy's config: unique names, references resolve
    by_name = {lc.name: lc for lc in node.listeners}
    # Both workloads use `inbound|8080` and `outbound` for different things: made unique.
    assert sorted(by_name) == ["shop/api-0|inbound|8080", "shop/api-0|outbound",
                               "shop/web-0|inbound|8080", "shop/web-0|outbound"]
    assert {lc.workload for lc in node.listeners} == {"shop/web-0", "shop/api-0"}
    web_in = by_name["shop/web-0|inbound|8080"]
    assert (web_in.address, web_in.cluster) == ("127.0.0.2", "shop/web-0|inbound|8080")
    inbound = {c.name: c for c in node.clusters if c.workload}
    assert set(inbound) == {"shop/web-0|inbound|8080", "shop/api-0|inbound|8080"}
    # The outbound side is the compiler's one table and its clusters, kept once, untouched.
    (table,) = node.route_tables
    assert table is snaps[web].route_tables[0] and table == snaps[api].route_tables[0]
    shared = [c for c in node.clusters if not c.workload]
    assert [c.name for c in shared] == [c.name for c in snaps[web].clusters
                                        if not c.name.startswith("inbound|")]
    assert by_name["shop/api-0|outbound"].route_table == "outbound"
    assert by_name["shop/api-0|outbound"].port == 15002
    assert node.node == snaps[web].node


def test_a_workload_alone_keeps_its_names_and_the_version_follows_the_parts() -> None:
    cache = PartCache()
    snaps = compiled(cache=cache)
    web, db = (NS, "web-0"), (NS, "db-0")
    a = merge([(web, snaps[web]), (db, snaps[db])])
    names = {lc.name for lc in a.listeners}
    assert "inbound|5432" in names and "inbound|8080" in names  # no clash: names kept
    assert {lc.workload for lc in a.listeners if lc.name == "inbound|5432"} == {"shop/db-0"}
    again = merge([(web, snaps[web]), (db, snaps[db])])
    assert again == a and again.version == a.version
    moved = compiled(workload("db-1", "127.0.0.5", 5432, 15004, app="web"), cache=cache)
    b = merge([(web, moved[web]), (db, moved[db])])
    assert b.version != a.version  # web-0's part changed (a new endpoint of web)


def test_workloads_that_disagree_on_settings_cannot_share_a_proxy() -> None:
    snaps = compiled()
    web, api = (NS, "web-0"), (NS, "api-0")
    other = msgspec.structs.replace(snaps[api], settings=msgspec.structs.replace(
        snaps[api].settings, workers=2))
    with pytest.raises(NodeError, match="shop/api-0 has other settings"):
        merge([(web, snaps[web]), (api, other)])


def test_node_snapshots_merge_again_only_when_a_part_changed() -> None:
    snaps = compiled()
    keys = [(NS, "web-0"), (NS, "api-0")]
    node = NodeSnapshots(keys)
    assert node.current({keys[0]: snaps[keys[0]]}.get) is None  # until every part exists
    first = node.current(snaps.get)
    assert first is not None and node.current(snaps.get) is first
    assert node.parts() == (snaps[keys[0]], snaps[keys[1]])
    single = NodeSnapshots(keys[:1])
    assert single.current(snaps.get) is snaps[keys[0]]  # one workload: its own snapshot


def test_references_follow_a_renamed_cluster_and_table() -> None:
    from tulle.proxyconfig import validate

    def part(port: int, upstream: int) -> ProxyConfig:
        return validate({"version": str(port), "listeners": [
            {"name": "out", "port": port, "route_table": "rt"},
            {"name": "tcp", "port": port + 1, "protocol": "tcp", "cluster": "x"}],
            "clusters": [{"name": "x", "endpoints": [{"address": "127.0.0.1",
                                                       "port": upstream}]}],
            "route_tables": [{"name": "rt", "virtual_hosts": [
                {"name": "h", "rules": [{"backends": [{"cluster": "x"}]}]}]}]})

    a, b = (NS, "a"), (NS, "b")
    node = merge([(a, part(1000, 1)), (b, part(2000, 2))])
    check(node)
    tables = {t.name: t for t in node.route_tables}
    assert set(tables) == {"shop/a|rt", "shop/b|rt"}
    assert tables["shop/b|rt"].virtual_hosts[0].rules[0].backends[0].cluster == "shop/b|x"
    lst = {lc.name: lc for lc in node.listeners}
    assert lst["shop/b|out"].route_table == "shop/b|rt"
    assert lst["shop/a|tcp"].cluster == "shop/a|x"
    assert {c.name: c.workload for c in node.clusters} == {"shop/a|x": "shop/a",
                                                          "shop/b|x": "shop/b"}


def test_each_workload_of_a_node_presents_its_own_certificate() -> None:
    """ADR 0032: the node's first workload keeps `workload`; the others' TLS settings name
    `workload:<ns>/<name>`, so the outbound clusters the compiler shares become one per
    workload (each workload's calls leave with its own identity) and the references follow."""
    snaps = compiled()  # the Mesh's default: STRICT mTLS
    web, api = (NS, "web-0"), (NS, "api-0")
    node = merge([(web, snaps[web]), (api, snaps[api])])
    check_compiled(node)
    listeners = {lc.name: lc for lc in node.listeners}
    web_in, api_in = listeners["shop/web-0|inbound|8080"], listeners["shop/api-0|inbound|8080"]
    assert [fc.tls.identity for fc in web_in.filter_chains if fc.tls] == ["workload"]
    assert [fc.tls.identity for fc in api_in.filter_chains if fc.tls] == [
        "workload:shop/api-0"]
    clusters = {c.name: c for c in node.clusters}
    # Every cluster of a workload presents that workload's certificate, never another's.
    assert {c.tls.identity for c in node.clusters if c.tls} == {"workload",
                                                                 "workload:shop/api-0"}
    tables = {t.name: t for t in node.route_tables}
    assert set(tables) == {"shop/web-0|outbound", "shop/api-0|outbound"}
    for wl, ident in (("shop/web-0", "workload"), ("shop/api-0", "workload:shop/api-0")):
        assert listeners[f"{wl}|outbound"].route_table == f"{wl}|outbound"
        named = {b.cluster for vh in tables[f"{wl}|outbound"].virtual_hosts
                 for r in vh.rules for b in r.backends}
        assert named and all(n.startswith(f"{wl}|") for n in named)
        for n in named:
            tls = clusters[n].tls
            assert tls is not None and tls.identity == ident
    # Without TLS nothing is renamed for identity's sake: the shared table stays shared.
    plain = compiled(PLAINTEXT)
    assert [t.name for t in merge([(web, plain[web]), (api, plain[api])]).route_tables] == [
        "outbound"]


def transparent(name: str, address: str, outbound: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": address, "interception": "transparent",
                            "serviceAccount": name}
    if outbound is not None:
        spec["outboundPort"] = outbound
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": spec}


def test_transparent_pods_of_one_agent_each_get_their_own_outbound_listener() -> None:
    """ADR 0047: agent mode.  Each pod's transparent `outbound` listener on its own port, its
    destinations pointing at that pod's own tables and clusters (its own certificate)."""
    docs = [service("web", app="web"), workload("web-0", "10.232.1.9", 8080, 15001, app="web"),
            transparent("pod-a", "10.232.0.2", 15001), transparent("pod-b", "10.232.0.3", 15002)]
    snaps = dict(compile_mesh(MeshInputs.from_resources(docs)).snapshots)
    a, b = (NS, "pod-a"), (NS, "pod-b")
    node = merge([(a, snaps[a]), (b, snaps[b])])
    check_compiled(node)
    by_name = {lc.name: lc for lc in node.listeners}
    assert {n: (lc.address, lc.port) for n, lc in by_name.items()} == {
        "shop/pod-a|outbound": ("127.0.0.1", 15001), "shop/pod-b|outbound": ("127.0.0.1", 15002)}
    clusters = {c.name: c for c in node.clusters}
    for key, lc in ((a, by_name["shop/pod-a|outbound"]), (b, by_name["shop/pod-b|outbound"])):
        names = {d.cluster for d in lc.destinations if d.cluster} | {
            r.backends[0].cluster for d in lc.destinations if d.route_table
            for t in node.route_tables if t.name == d.route_table
            for vh in t.virtual_hosts for r in vh.rules}
        assert names and all(n.startswith(f"shop/{key[1]}|") for n in names), names
        identities = {clusters[n].tls.identity for n in names if clusters[n].tls is not None}
        want = "workload" if key == a else "workload:shop/pod-b"
        assert identities == {want}, (key, identities)


def test_two_transparent_pods_on_the_default_port_are_refused_with_the_reason() -> None:
    docs = [service("web", app="web"), workload("web-0", "10.232.1.9", 8080, 15001, app="web"),
            transparent("pod-a", "10.232.0.2", None), transparent("pod-b", "10.232.0.3", None)]
    snaps = dict(compile_mesh(MeshInputs.from_resources(docs)).snapshots)
    a, b = (NS, "pod-a"), (NS, "pod-b")
    with pytest.raises(NodeError, match=r"shop/pod-a \(listener outbound\) and shop/pod-b "
                                        r"\(listener outbound\) both listen on 127\.0\.0\.1:15001"
                                        r".*own outboundPort"):
        merge([(a, snaps[a]), (b, snaps[b])])


def test_a_transparent_pod_with_inbound_ports_cannot_be_served_by_an_agent() -> None:
    """Its inbound listener is a sidecar's, taking what iptables redirects inside the pod: a
    clear refusal, not a snapshot the agent would NACK for every pod (ADR 0047)."""
    server = {**transparent("srv", "10.232.0.4", 15003)}
    server["spec"]["ports"] = [{"port": 8080, "appProtocol": "http"}]
    docs = [transparent("pod-a", "10.232.0.2", 15001), server]
    snaps = dict(compile_mesh(MeshInputs.from_resources(docs)).snapshots)
    a, s = (NS, "pod-a"), (NS, "srv")
    with pytest.raises(NodeError, match=r"shop/srv is transparent with inbound ports "
                                        r"\(listener inbound on 0\.0\.0\.0:15006: .*"
                                        r"`interception: agent`"):
        merge([(a, snaps[a]), (s, snaps[s])])


def test_an_agent_pod_gets_its_inbound_listener_on_the_agent_forwarding_to_the_pod() -> None:
    """`interception: agent` (ADR 0047): inbound on 127.0.0.1:inboundPort, chains by
    destination port as for a sidecar, the application dialled at the pod's address; the
    merged listener presents the pod's own certificate."""
    srv = transparent("srv", "10.232.0.4", 15003)
    srv["spec"].update(interception="agent", inboundPort=15103,
                       ports=[{"port": 8080, "targetPort": 9090, "appProtocol": "http"}])
    pod_a = transparent("pod-a", "10.232.0.2", 15001)
    pod_a["spec"]["interception"] = "agent"
    snaps = dict(compile_mesh(MeshInputs.from_resources([pod_a, srv])).snapshots)
    a, s = (NS, "pod-a"), (NS, "srv")
    node = merge([(a, snaps[a]), (s, snaps[s])])
    check_compiled(node)
    by_name = {lc.name: lc for lc in node.listeners}
    inbound = by_name["inbound"]
    assert (inbound.address, inbound.port, inbound.mode, inbound.workload) == (
        "127.0.0.1", 15103, "transparent", "shop/srv")
    assert {fc.match.destination_port for fc in inbound.filter_chains} == {8080}
    assert {fc.tls.identity for fc in inbound.filter_chains if fc.tls is not None} == {
        "workload:shop/srv"}
    clusters = {c.name: c for c in node.clusters}
    (target,) = {fc.cluster or fc.route_table for fc in inbound.filter_chains}
    app = clusters.get(target) or clusters["inbound|8080"]
    assert [(e.address, e.port) for e in app.endpoints] == [("10.232.0.4", 9090)]
    assert (by_name["shop/pod-a|outbound"].port, by_name["shop/srv|outbound"].port) == (
        15001, 15003)


def agent_pod(name: str, address: str, outbound: int, namespace: str = NS,
              **spec: Any) -> dict[str, Any]:
    doc = transparent(name, address, outbound)
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(interception="agent", **spec)
    return doc


def test_the_agent_runs_one_resolver_answering_each_pod_in_its_own_namespace() -> None:
    """ADR 0050: each agent-mode pod's part names the pod as a DNS client with its namespace;
    the node's one resolver joins them."""
    docs = [service("web", app="web"), workload("web-0", "10.232.1.9", 8080, 15001, app="web"),
            agent_pod("pod-a", "10.232.0.2", 15001),
            agent_pod("pod-b", "10.232.0.3", 15002, namespace="blue")]
    snaps = dict(compile_mesh(MeshInputs.from_resources(docs)).snapshots)
    a, b = (NS, "pod-a"), ("blue", "pod-b")
    assert snaps[a].dns is not None and snaps[a].dns.port == 15053
    assert [(c.address, c.namespace) for c in snaps[a].dns.clients] == [("10.232.0.2", "shop")]
    assert snaps[(NS, "web-0")].dns is None  # an explicit workload still gets none
    node = merge([(a, snaps[a]), (b, snaps[b])])
    check_compiled(node)
    assert node.dns is not None and node.dns.hosts is snaps[a].dns.hosts
    assert [(c.address, c.namespace) for c in node.dns.clients] == [
        ("10.232.0.2", "shop"), ("10.232.0.3", "blue")]
    # A pod that names another resolver port cannot share the node's one resolver.
    docs[-1] = agent_pod("pod-b", "10.232.0.3", 15002, namespace="blue", dnsPort=15054)
    snaps = dict(compile_mesh(MeshInputs.from_resources(docs)).snapshots)
    with pytest.raises(NodeError, match=r"shop/pod-a and blue/pod-b run the mesh DNS resolver "
                                        r"differently \(port 15053 vs 15054\)"):
        merge([(a, snaps[a]), (b, snaps[b])])


def test_pods_of_one_agent_dial_each_other_at_the_callees_loopback_alias() -> None:
    """ADR 0050: pod-a's clusters (by the Service and by pod IP) reach srv, a pod of the same
    agent, at srv's alias, which the node DNATs to srv's inbound listener; srv's own inbound
    cluster still dials its application at the pod's address."""
    srv = agent_pod("srv", "10.232.0.4", 15003, inboundPort=15103, ports=[
        {"name": "http", "port": 8080, "targetPort": 9090, "appProtocol": "http"}])
    docs = [service("srv", app="srv"), agent_pod("pod-a", "10.232.0.2", 15001), srv]
    snaps = dict(compile_mesh(MeshInputs.from_resources(docs)).snapshots)
    a, s = (NS, "pod-a"), (NS, "srv")
    assert any(e.address == "10.232.0.4" for c in snaps[a].clusters for e in c.endpoints)
    node = merge([(a, snaps[a]), (s, snaps[s])])
    check_compiled(node)
    by_name = {c.name: c for c in node.clusters}
    dialled = {(c.name, e.address, e.port) for c in node.clusters for e in c.endpoints}
    assert not any(addr == "10.232.0.4" and port == 8080 for _, addr, port in dialled), dialled
    aliased = {name for name, addr, port in dialled if (addr, port) == ("127.1.58.255", 8080)}
    # By the Service and by pod IP, from pod-a (its own certificate) and from srv itself.
    assert aliased == {f"shop/{who}|{c}" for who in ("pod-a", "srv")
                       for c in ("outbound|80||srv.shop", "pod|8080||srv.shop")}, aliased
    assert by_name["shop/pod-a|outbound|80||srv.shop"].tls.identity == "workload"  # type: ignore[union-attr]
    inbound = {lc.name: lc for lc in node.listeners}["inbound"]
    assert all(not fc.match.destination for fc in inbound.filter_chains)  # by port alone
    app = {fc.cluster or fc.route_table for fc in inbound.filter_chains}
    assert {(addr, port) for name, addr, port in dialled
            if name in app or name == "inbound|8080"} == {("10.232.0.4", 9090)}
