"""The outbound route table and clusters, rendered once from the model for every proxy.

Each Service port that speaks HTTP gets a virtual host answering to its domains; its rules are
those of the routes attached to it (in route order), or one default rule to its own cluster.
Clusters are every HTTP Service port's, plus any a rule points at (a canary, a cross-service
split, an opaque port named as a backend), sorted by name; each with the model's default
connect timeout when it sets one.  Rules a plugin left out are not
rendered; the route's status says why.  Opaque TCP services need interception or a port of
their own, so they are not on this table.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.controlplane.compiler.ir import Key, MeshModel, Rule, ServicePort


def service_cluster(sp: ServicePort, connect_timeout_ms: int | None = None) -> dict[str, Any]:
    endpoints: list[dict[str, Any]] = []
    for e in sp.endpoints:
        ep: dict[str, Any] = {"address": e.address, "port": e.port,
                              "metadata": e.metadata.render()}
        if e.metadata.zone:
            ep["zone"] = e.metadata.zone
        endpoints.append(ep)
    out: dict[str, Any] = {"name": sp.cluster_name, "endpoints": endpoints,
                           "protocol": "http1" if sp.protocol == "tcp" else sp.protocol,
                           "metadata": sp.metadata.render()}
    if connect_timeout_ms is not None:
        out["connect_timeout_ms"] = connect_timeout_ms
    return out


def rule(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name,
                           "matches": [{"path": {"type": m.type, "value": m.value}}
                                       for m in r.matches]}
    if r.timeout_ms is not None:
        out["timeout_ms"] = r.timeout_ms
    out["backends"] = [{"cluster": b.cluster, "weight": b.weight} for b in r.backends]
    filters = [msgspec.to_builtins(f.config) for f in r.filters if f.config is not None]
    if filters:
        out["filters"] = filters
    return out


def outbound_shared(mesh: MeshModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The outbound route table and clusters, the same for every proxy."""
    routed: dict[tuple[Key, int], list[dict[str, Any]]] = {}
    for route in mesh.routes:
        rendered = [rule(r) for r in route.rules if not r.left_out]
        for target in route.parents:
            routed.setdefault(target, []).extend(rendered)
    hosts: list[dict[str, Any]] = []
    clusters: dict[str, dict[str, Any]] = {}
    by_name = {sp.cluster_name: sp for sp in mesh.services}
    connect_ms = mesh.defaults.connect_timeout_ms
    for sp in mesh.services:
        if sp.protocol == "tcp":
            continue  # opaque TCP services need interception or a port of their own
        clusters[sp.cluster_name] = service_cluster(sp, connect_ms)
        rules = routed.get((sp.key, sp.port))
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
                    other = by_name.get(c)
                    clusters[c] = (service_cluster(other, connect_ms) if other is not None
                                   else {"name": c, "endpoints": []})
    if not hosts:
        return [], []
    return [{"name": "outbound", "virtual_hosts": hosts}], [clusters[k] for k in sorted(clusters)]


__all__ = ["outbound_shared", "rule", "service_cluster"]
