"""One proxy's snapshot: its workload's inbound side plus the services it may call.

Universal mode without interception: each workload port gets an inbound listener on the
workload's address that forwards to the application on 127.0.0.1 at the port's `targetPort`.
The listener speaks the port's protocol (`protocols.port_protocol`: `appProtocol`, then the
port name, else `auto`): an HTTP port's listener speaks only HTTP, so nothing reaches the
application without going through the HTTP stack; a `tcp` port is relayed unsniffed; only a
port nobody described is sniffed.  One outbound listener (default 127.0.0.1:15001,
`spec.outboundPort` to change) routes HTTP by Host to every Service of the mesh.  Transparent
interception (iptables) reuses the same route table and clusters behind 15001/15006 — only
the listeners change.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler.inputs import Key, Resource, spec_of
from tulle.controlplane.compiler.protocols import port_protocol
from tulle.controlplane.compiler.services import ServicePort

DEFAULT_OUTBOUND_PORT = 15001


def inbound(workload: Resource) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = spec_of(workload)
    address = spec.get("address") or "127.0.0.1"
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    for p in sorted(spec.get("ports") or [], key=lambda p: int(p["port"])):
        port = int(p["port"])
        app_port = int(p.get("targetPort") or port)
        proto = port_protocol(p, "auto")
        name = f"inbound|{port}"
        listeners.append({"name": name, "address": address, "port": port,
                          "direction": "inbound", "protocol": proto, "cluster": name})
        clusters.append({"name": name, "protocol": "http1" if proto == "auto" else proto,
                         "endpoints": [{"address": "127.0.0.1", "port": app_port}]})
    return listeners, clusters


def outbound_listener(workload: Resource) -> dict[str, Any]:
    """The listener the application calls every Service through.  It carries HTTP/1.1 and h2c
    (gRPC) alike, so it sniffs which one; with a route table and no cluster it relays nothing:
    what is not HTTP is refused, and a client silent past the detect timeout is closed."""
    port = int(spec_of(workload).get("outboundPort") or DEFAULT_OUTBOUND_PORT)
    return {"name": "outbound", "address": "127.0.0.1", "port": port, "protocol": "auto",
            "route_table": "outbound"}


def outbound_shared(ports: list[ServicePort],
                    routed: dict[tuple[Key, int], list[dict[str, Any]]]) -> tuple[
                        list[dict[str, Any]], list[dict[str, Any]]]:
    """The outbound route table and clusters, the same for every proxy."""
    hosts: list[dict[str, Any]] = []
    clusters: dict[str, dict[str, Any]] = {}
    by_name = {sp.cluster_name: sp.cluster for sp in ports}
    for sp in ports:
        if sp.protocol == "tcp":
            continue  # opaque TCP services need interception or a port of their own
        clusters[sp.cluster_name] = sp.cluster
        rules = routed.get(((sp.namespace, sp.name), sp.port))
        if not rules:
            rules = [{"name": f"default/{sp.namespace}/{sp.name}/{sp.port}",
                      "backends": [{"cluster": sp.cluster_name}]}]
        hosts.append({"name": f"{sp.name}.{sp.namespace}:{sp.port}",
                      "domains": list(sp.domains), "rules": rules})
        # Rules may point at other services' clusters (canaries, cross-service splits).
        for r in rules:
            for b in r["backends"]:
                c = b["cluster"]
                if c not in clusters:
                    clusters[c] = by_name.get(c) or {"name": c, "endpoints": []}
    if not hosts:
        return [], []
    return [{"name": "outbound", "virtual_hosts": hosts}], [clusters[k] for k in sorted(clusters)]
