"""The listeners of a transparent workload (`Workload.spec.interception: transparent`, ADR 0044).

iptables (`tulle iptables apply`, or the rules a test sets by hand) redirects the pod's
outbound TCP to 15001 and its inbound TCP to 15006; these listeners read the original
destination and decide from it alone -- never from a Host header:

- **Outbound** (`outbound`, 127.0.0.1:`outboundPort`, one listener for every transparent
  proxy, rendered once): per original destination, first match wins --
  1. a Service's `virtualIP:port` (or `virtualIPv6`, ADR 0088): an HTTP port routes by its own table
     (`outbound|<svc>.<ns>:<port>`: the Service's virtual host with domains `*`, so the Host
     header does not choose the Service; a consumer route's namespace gets its own version of
     the table under the same name, `consumer_hosts`); a TCP port goes to its TCP cluster
     (`outbound-tcp|<port>||<svc>.<ns>`), whose endpoints are those of the TCPRoute attached
     to it (weighted backends), else the Service's own;
  2. a workload's `address:port` (a pod IP, or its `additionalAddresses` entry: a dual-stack
     pod's other family, ADR 0088): to that very endpoint, over mTLS when it takes it
     (`pod|<port>||<name>.<ns>`: the pod's own identity expected, dialled at `address`) -- the
     Service's routes do not apply, as in Kubernetes, but the mesh's mTLS does;
  3. on a node agent's pod listener under `ALLOW_ANY`, an agent-mode workload's address on
     any other port (one it does not declare): refused (`Destination.refuse`,
     `kind="destination_refused"`), because the agent's passthrough would reach the pod's
     application from the node, past the pod's inbound side (ADR 0114);
  4. anything else: `Mesh.spec.outboundTrafficPolicy` -- `ALLOW_ANY` passes it through to the
     original destination; `REGISTRY_ONLY` refuses it (the connection is reset, counted in
     `tulle_proxy_protocol_errors_total{kind="no_destination"}`).
- **Inbound** (`inbound`, `0.0.0.0:15006` and `[::]:15006`): one filter chain per workload
  port, chosen by the original destination port, with the port's protocol and the mTLS chains
  the `mtls` plugin decided (ADR 0033) -- the explicit per-port listeners' routing, moved
  into chains.  A port the workload does not declare matches no chain and is refused
  (`no_filter_chain`): nothing reaches the application around the proxy's policies.  TCP
  ports are opaque (never sniffed, so server-first protocols work in plaintext too).
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any, NamedTuple

from tulle.controlplane.compiler.ir import Endpoint, MeshModel, Proxy, ServicePort, TCPRoute
from tulle.controlplane.compiler.outbound import Outbound, service_cluster, upstream_mtls
from tulle.controlplane.compiler.plugins.mtls import spiffe_ids, trust_domains
from tulle.controlplane.compiler.plugins.tcp_routes import (
    winning_consumer_tcp_routes,
    winning_tcp_routes,
)

OUTBOUND_ADDRESS = "127.0.0.1"
"""Where iptables' REDIRECT sends a pod's own outbound connections (OUTPUT chain: loopback)."""
OUTBOUND_ADDRESS6 = "::1"
"""Where ip6tables' REDIRECT sends them: a sidecar's listeners serve both (ADR 0088)."""
INBOUND_ADDRESS, INBOUND_ADDRESS6 = "0.0.0.0", "::"
"""A sidecar's inbound listener: REDIRECT in PREROUTING sends to the receiving interface's
first address of the family, whichever that is; the wildcards take it, and stay the same when
the Workload's address is edited, so the listener's sockets never need binding anew (ADR
0088).  A connection straight to port 15006 has no chain for its destination port."""
INBOUND_PORT = 15006
MAX_WEIGHT = 1_000_000


def table_name(host_name: str) -> str:
    """The route table of one HTTP Service port on the transparent listener."""
    return f"outbound|{host_name}"


def tcp_cluster_name(sp: ServicePort) -> str:
    return f"outbound-tcp|{sp.port}||{sp.name}.{sp.namespace}"


def pod_cluster_name(proxy: Proxy, port: int) -> str:
    return f"pod|{port}||{proxy.name}.{proxy.namespace}"


def outbound_policy(mesh: MeshModel) -> str:
    spec = mesh.mesh.spec if mesh.mesh is not None else {}
    section = spec.get("outboundTrafficPolicy")
    mode = section.get("mode") if isinstance(section, dict) else None
    return "REGISTRY_ONLY" if mode == "REGISTRY_ONLY" else "ALLOW_ANY"


def _weighted(route: TCPRoute, by_cluster: dict[str, ServicePort]) -> tuple[
        list[tuple[Endpoint, int]], tuple[str, ...] | None]:
    """The route's backends as one endpoint list whose weights split connections as the
    backends' weights do: an endpoint of a backend with n endpoints weighs w * L / n (L the
    least common multiple of the n's).  Backends that do not resolve, weigh 0 or have no
    endpoint take no share.  Returns the endpoints and a backend that lends its TLS."""
    parts = [(by_cluster[b.cluster], b.weight) for b in route.backends
             if b.weight and b.cluster in by_cluster and by_cluster[b.cluster].endpoints]
    # A cluster is either mTLS or plaintext: when backends disagree, only the mTLS ones are
    # kept (never plaintext to a server that requires mTLS, as the mtls plugin does).
    if any(sp.tls is not None for sp, _ in parts):
        parts = [(sp, w) for sp, w in parts if sp.tls is not None]
    if not parts:
        return [], None
    lcm = math.lcm(*(len(sp.endpoints) for sp, _ in parts))
    out = [(e, max(1, min(MAX_WEIGHT, w * lcm // len(sp.endpoints))))
           for sp, w in parts for e in sp.endpoints]
    ids = sorted({i for sp, _ in parts if sp.tls is not None for i in sp.tls.expected_spiffe_ids})
    return out, (tuple(ids) if ids else None)


def _tcp_cluster(sp: ServicePort, route: TCPRoute | None,
                 by_cluster: dict[str, ServicePort], connect_ms: int | None) -> dict[str, Any]:
    if route is None:
        out = service_cluster(sp, connect_ms)
    else:
        weighted, ids = _weighted(route, by_cluster)
        out = {k: v for k, v in service_cluster(sp, connect_ms).items() if k != "tls"}
        eps = []
        for e, w in weighted:
            ep: dict[str, Any] = {"address": e.address, "port": e.port, "weight": w,
                                  "metadata": e.metadata.render()}
            if e.metadata.zone:
                ep["zone"] = e.metadata.zone
            eps.append(ep)
        out["endpoints"] = eps
        # The route's weights are the split asked for: weighted round robin gives exactly
        # that share of connections (a latency-aware balancer would move it).
        out["lb_policy"] = "round_robin"
        out.pop("lb", None)
        if ids is not None:
            out["tls"] = upstream_mtls("tcp", ids)
    out = {**out, "name": tcp_cluster_name(sp), "protocol": "tcp"}
    if "tls" in out:
        out["tls"] = {**out["tls"], "alpn": ["tulle-tcp"]}
    return out


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _pod_destinations(mesh: MeshModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A destination and a cluster per workload port: the pod IP to that pod, unchanged."""
    tds = trust_domains(mesh)
    dests: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for proxy in mesh.proxies:
        if not proxy.address or _loopback(proxy.address):
            continue  # a loopback workload is nobody's pod IP (and iptables leaves 127/8 alone)
        modes = dict(proxy.mtls)
        for p in proxy.inbound:
            if (proxy.address, p.port) in seen:
                continue  # two workloads claim one address:port: the first by namespace/name
            seen.add((proxy.address, p.port))
            name = pod_cluster_name(proxy, p.port)
            protocol = "http1" if p.protocol == "auto" else p.protocol
            cluster: dict[str, Any] = {"name": name, "protocol": protocol, "endpoints": [
                {"address": proxy.address, "port": p.port}]}
            if mesh.defaults.connect_timeout_ms is not None:
                cluster["connect_timeout_ms"] = mesh.defaults.connect_timeout_ms
            if proxy.sidecar and modes.get(p.port, "DISABLED") != "DISABLED":
                cluster["tls"] = upstream_mtls(protocol, spiffe_ids(
                    tds, proxy.namespace, proxy.service_account))
            clusters.append(cluster)
            dests.append({"address": proxy.address, "port": p.port, "protocol": p.protocol,
                          "cluster": name})
            for extra in proxy.additional_addresses:  # its other family: the same pod
                if (extra, p.port) not in seen and not _loopback(extra):
                    seen.add((extra, p.port))
                    dests.append({"address": extra, "port": p.port, "protocol": p.protocol,
                                  "cluster": name})
    return dests, clusters


def agent_refusals(mesh: MeshModel) -> list[dict[str, Any]]:
    """The destinations a node agent's pod listener refuses after every other one (ADR 0114):
    each address of every `interception: agent` workload, on any port its pod-IP
    destinations (`_pod_destinations`, before these) did not take, i.e. the ports it does
    not declare.  Only under `ALLOW_ANY`: the agent's passthrough dials from the node, so a
    same-node pod's inbound side (its listener on the agent) never sees the call, which a
    sidecar's inbound side, or that pod's from another node, closes (`no_filter_chain`).
    Under `REGISTRY_ONLY` nothing is passed through and none is needed."""
    if outbound_policy(mesh) != "ALLOW_ANY":
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for proxy in mesh.proxies:
        if proxy.interception != "agent":
            continue
        for address in (proxy.address, *proxy.additional_addresses):
            if address and address not in seen and not _loopback(address):
                seen.add(address)
                out.append({"address": address, "refuse": True})
    return out


class TransparentOut(NamedTuple):
    """The outbound side of every transparent proxy, rendered once."""

    listener: dict[str, Any]
    tables: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    """Clusters only the transparent listener names (TCP Service ports, pods)."""
    consumer_hosts: dict[str, list[dict[str, Any]]]
    """Client namespace -> its own version of some virtual hosts of `tables` (domains `*`)."""
    consumer_clusters: dict[str, list[dict[str, Any]]] = {}
    """Client namespace -> its own version of some TCP clusters of `clusters` (same names):
    the Service ports a consumer TCPRoute of that namespace decides."""
    refusals: tuple[dict[str, Any], ...] = ()
    """What a node agent's pod listeners add after `listener`'s destinations
    (`agent_refusals`)."""


def render_outbound(mesh: MeshModel, out: Outbound, port: int) -> TransparentOut:
    """The transparent outbound listener (port `port`), its per-Service-port tables and the
    clusters only it needs; `out` is the explicit outbound side (its hosts and clusters are
    reused: one rule set per Service port, whichever listener a request came through)."""
    hosts = out.tables[0]["virtual_hosts"] if out.tables else []
    http_ports = [sp for sp in mesh.services if sp.protocol != "tcp"]
    by_cluster = {sp.cluster_name: sp for sp in mesh.services}
    tcp_routes = winning_tcp_routes(mesh)
    connect_ms = mesh.defaults.connect_timeout_ms
    tables: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    dests: list[dict[str, Any]] = []
    for sp, host in zip(http_ports, hosts, strict=True):
        name = table_name(host["name"])
        tables.append({"name": name, "virtual_hosts": [{**host, "domains": ["*"]}]})
        for vip in (sp.vip, sp.vip6):
            if vip:
                dests.append({"address": vip, "port": sp.port, "protocol": sp.protocol,
                              "route_table": name})
    for sp in mesh.services:
        if sp.protocol != "tcp":
            continue
        clusters.append(_tcp_cluster(sp, tcp_routes.get((sp.key, sp.port)), by_cluster,
                                     connect_ms))
        for vip in (sp.vip, sp.vip6):
            if vip:
                dests.append({"address": vip, "port": sp.port, "protocol": "tcp",
                              "cluster": tcp_cluster_name(sp)})
    pod_dests, pod_clusters = _pod_destinations(mesh)
    listener = {"name": "outbound", "address": OUTBOUND_ADDRESS, "port": port,
                "direction": "outbound", "mode": "transparent", "protocol": "auto",
                "passthrough": outbound_policy(mesh) == "ALLOW_ANY",
                "destinations": dests + pod_dests}
    consumer = {ns: [{**h, "domains": ["*"]} for h in hs]
                for ns, hs in out.consumer_hosts.items()}
    tcp_ports = {(sp.key, sp.port): sp for sp in mesh.services if sp.protocol == "tcp"}
    consumer_clusters = {
        ns: [_tcp_cluster(tcp_ports[t], route, by_cluster, connect_ms)
             for t, route in sorted(decided.items()) if t in tcp_ports]
        for ns, decided in sorted(winning_consumer_tcp_routes(mesh).items())}
    return TransparentOut(listener, tables, sorted(clusters + pod_clusters,
                                                   key=lambda c: str(c["name"])), consumer,
                          {ns: cs for ns, cs in consumer_clusters.items() if cs},
                          tuple(agent_refusals(mesh)))


def inbound_listener(proxy: Proxy, per_port: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The inbound listener on 15006: `per_port` (the explicit listeners `proxies.inbound`
    renders, one per workload port) as filter chains chosen by destination port."""
    chains: list[dict[str, Any]] = []
    opaque: list[int] = []
    for lst in per_port:
        port = int(lst["port"])
        if lst.get("filter_chains"):
            for c in lst["filter_chains"]:
                chains.append({**c, "name": f"{port}|{c['name']}",
                               "match": {**c["match"], "destination_port": port}})
        else:
            chain = {"name": str(port), "match": {"destination_port": port},
                     "protocol": lst["protocol"]}
            chain.update({k: lst[k] for k in ("route_table", "cluster", "network_filters")
                          if k in lst})
            chains.append(chain)
        if any(p.port == port and p.protocol == "tcp" for p in proxy.inbound):
            opaque.append(port)
    if not chains:
        return None
    agent = proxy.interception == "agent"  # ADR 0047: on the node agent's loopback
    out: dict[str, Any] = {"name": "inbound",
                           "address": OUTBOUND_ADDRESS if agent else INBOUND_ADDRESS,
                           "port": proxy.inbound_port if agent else INBOUND_PORT,
                           "direction": "inbound", "mode": "transparent", "protocol": "auto",
                           "filter_chains": chains}
    if opaque:
        out["opaque_ports"] = opaque
    if not agent:  # ip6tables' REDIRECT: the interface's first IPv6 address (ADR 0088)
        out["additional_addresses"] = [INBOUND_ADDRESS6]
    return out


def agent_cluster(cluster: dict[str, Any], address: str) -> dict[str, Any]:
    """An inbound cluster of a pod served by its node's agent (ADR 0047): the application is
    not on the agent's loopback but at the pod's own address (the agent's dial leaves the
    node's namespace through the pod's veth; `tulle iptables node` does not steer it back)."""
    eps = cluster.get("endpoints") or []
    if not any(e.get("address") == "127.0.0.1" for e in eps):
        return cluster
    return {**cluster, "endpoints": [{**e, "address": address}
                                     if e.get("address") == "127.0.0.1" else e for e in eps]}


__all__ = [
    "INBOUND_ADDRESS",
    "INBOUND_ADDRESS6",
    "INBOUND_PORT",
    "OUTBOUND_ADDRESS",
    "OUTBOUND_ADDRESS6",
    "TransparentOut",
    "agent_cluster",
    "agent_refusals",
    "inbound_listener",
    "outbound_policy",
    "pod_cluster_name",
    "render_outbound",
    "table_name",
    "tcp_cluster_name",
]
