"""The outbound route table and clusters, rendered once from the model for every proxy.

Each Service port that speaks HTTP gets a virtual host answering to its domains; its rules are
those of the routes attached to it (`Attached`: producer routes for every client, consumer
routes for their own namespace's clients, in Gateway API precedence order), or — no route
attached — one default rule to its own cluster.
Clusters are every HTTP Service port's, plus any a rule points at (a canary, a cross-service
split, an opaque port named as a backend), sorted by name; each with the model's default
connect timeout when it sets one.  A rule a plugin left out answers 500; one whose matches
cannot be run is not rendered; the route's status says why.  Opaque TCP services need
interception or a port of their own, so they are not on this table.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from tulle.controlplane.compiler.ir import (
    INVALID_BACKEND,
    Backend,
    Key,
    MeshModel,
    Route,
    Rule,
    ServicePort,
)
from tulle.proxyconfig.model import RouteMatch
from tulle.proxyconfig.reserved import MESH_BUNDLE, WORKLOAD_IDENTITY


def service_cluster(sp: ServicePort, connect_timeout_ms: int | None = None) -> dict[str, Any]:
    endpoints: list[dict[str, Any]] = []
    for e in sp.endpoints:
        ep: dict[str, Any] = {"address": e.address, "port": e.port,
                              "metadata": e.metadata.render()}
        if e.metadata.zone:
            ep["zone"] = e.metadata.zone
        if e.weight != 1:
            ep["weight"] = e.weight
        endpoints.append(ep)
    out: dict[str, Any] = {"name": sp.cluster_name, "endpoints": endpoints,
                           "protocol": "http1" if sp.protocol == "tcp" else sp.protocol,
                           "metadata": sp.metadata.render()}
    if connect_timeout_ms is not None:
        out["connect_timeout_ms"] = connect_timeout_ms
    if sp.tls is not None:
        out["tls"] = upstream_mtls(out["protocol"], sp.tls.expected_spiffe_ids)
    if sp.lb is not None:  # `lb_policy` and `lb` (the load_balancing plugin)
        out.update(sp.lb)
    if sp.health is not None:  # `outlier_detection`, `health_check` (endpoint_health plugin)
        out.update(sp.health)
    if sp.retry_budget is not None:
        out["retry_budget"] = dict(sp.retry_budget)
    if sp.limits is not None:  # bulkheads (the circuit_breaker plugin)
        out["limits"] = dict(sp.limits)
    out.update(sp.cluster_timeouts)  # a TimeoutPolicy's, over the Mesh default
    return out


MESH_IDENTITY = WORKLOAD_IDENTITY
"""The proxy's own certificate: the reserved `identities` name it injects (ADR 0028)."""
ALPN = {"http1": "http/1.1", "http2": "h2", "tcp": "tulle-tcp"}
"""What a mesh mTLS connection carries, by the cluster's protocol (ADR 0030)."""


def upstream_mtls(protocol: str, expected: tuple[str, ...]) -> dict[str, Any]:
    """Mesh mTLS from a client proxy (ADR 0033): its own SVID, the mesh roots, TLS 1.3, the
    application protocol in ALPN, the server's SPIFFE ID checked."""
    return {"identity": MESH_IDENTITY, "trust_bundle": MESH_BUNDLE, "min_version": "1.3",
            "alpn": [ALPN[protocol]], "expected_spiffe_ids": list(expected)}


def _match(m: RouteMatch) -> dict[str, Any]:
    """A match as the contract writes it, with only what it sets (a path-only match stays
    readable by a proxy without the `route-matches` feature)."""
    out: dict[str, Any] = {"path": {"type": m.path.type, "value": m.path.value}}
    if m.headers:
        out["headers"] = [msgspec.to_builtins(h) for h in m.headers]
    if m.query_params:
        out["query_params"] = [msgspec.to_builtins(q) for q in m.query_params]
    if m.method is not None:
        out["method"] = m.method
    return out


def _backend(b: Backend) -> dict[str, Any]:
    out: dict[str, Any] = {"cluster": b.cluster, "weight": b.weight}
    if b.filters:
        out["filters"] = [msgspec.to_builtins(f) for f in b.filters]
    return out


def rule(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name, "matches": [_match(m) for m in r.matches]}
    if r.left_out:
        # Invalid (a setting refused, a filter nobody runs): its traffic gets Gateway API's
        # 500, never the default route nor a request forwarded without what was asked.
        out["backends"] = [{"cluster": INVALID_BACKEND, "weight": 1}]
        return out
    if r.timeout_ms is not None:
        out["timeout_ms"] = r.timeout_ms
    if r.backend_timeout_ms:
        out["backend_timeout_ms"] = r.backend_timeout_ms
    if r.retry is not None:
        out["retry"] = dict(r.retry)
    if r.stream_idle_timeout_ms:
        out["stream_idle_timeout_ms"] = r.stream_idle_timeout_ms
    out["backends"] = [_backend(b) for b in r.backends]
    filters = [msgspec.to_builtins(f.config) for f in r.filters if f.config is not None]
    if r.session is not None:
        filters.append(msgspec.to_builtins(r.session))
    if filters:
        out["filters"] = filters
    return out


Target = tuple[Key, int]
"""A Service port a route attaches to."""


class Attached:
    """The routes on each Service port, by who they apply to (GAMMA).

    A *producer* route (in the Service's own namespace) applies to every client; a *consumer*
    route (in another namespace) only to clients in the route's namespace, and there it takes
    the place of the producer routes for that Service port.  Rules are listed in precedence
    order between routes (oldest route first, then namespace/name; `Route.precedence`) and in
    their own order within one: the proxy sorts a host's matches by Gateway API precedence and
    keeps this order among equals, which makes it the tie-breaker the spec asks for.
    """

    def __init__(self, mesh: MeshModel) -> None:
        self.producer: dict[Target, list[Route]] = {}
        self.consumer: dict[str, dict[Target, list[Route]]] = {}
        for route in sorted(mesh.routes, key=lambda r: r.precedence):
            for target in route.parents:
                if route.namespace == target[0][0]:
                    self.producer.setdefault(target, []).append(route)
                else:
                    self.consumer.setdefault(route.namespace, {}).setdefault(target,
                                                                            []).append(route)


def _host(sp: ServicePort, routes: list[Route] | None,
          rendered: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    if routes is None:
        default: dict[str, Any] = {"name": f"default/{sp.namespace}/{sp.name}/{sp.port}",
                                   "backends": [{"cluster": sp.cluster_name}]}
        if sp.retry is not None:
            default["retry"] = dict(sp.retry)
        default.update(sp.default_timeouts)
        rules = [default]
    else:
        # Routes attached: only their rules.  None of them matching is a 404 (GAMMA), never
        # the Service's default route.
        rules = []
        for route in routes:
            got = rendered.get(id(route))
            if got is None:
                # Rules without a match the proxy can run are not rendered at all.
                got = rendered[id(route)] = [rule(r) for r in route.rules if r.matches]
            rules.extend(got)
    return {"name": f"{sp.name}.{sp.namespace}:{sp.port}", "domains": list(sp.domains),
            "rules": rules, "service": f"{sp.namespace}/{sp.name}"}


class Outbound(NamedTuple):
    """The outbound side, rendered once: what every proxy gets, and what the proxies of a
    namespace with consumer routes get instead for the hosts those routes change."""

    tables: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    consumer_hosts: dict[str, list[dict[str, Any]]]
    """Client namespace -> its own versions of some virtual hosts of the `outbound` table
    (same names, same domains), in that table's order."""


def outbound_shared(mesh: MeshModel) -> Outbound:
    """The outbound route table and clusters, the same for every proxy, and the per-namespace
    hosts consumer routes make."""
    attached = Attached(mesh)
    rendered: dict[int, list[dict[str, Any]]] = {}
    hosts: list[dict[str, Any]] = []
    consumer_hosts: dict[str, list[dict[str, Any]]] = {}
    clusters: dict[str, dict[str, Any]] = {}
    by_name = {sp.cluster_name: sp for sp in mesh.services}
    connect_ms = mesh.defaults.connect_timeout_ms

    def need(host: dict[str, Any]) -> None:
        # Rules may point at other services' clusters (canaries, cross-service splits).
        for r in host["rules"]:
            for b in r["backends"]:
                c = b["cluster"]
                if c not in clusters:
                    other = by_name.get(c)
                    if other is not None:
                        clusters[c] = service_cluster(other, connect_ms)
                    elif c == INVALID_BACKEND:  # answered 500 by the proxy itself
                        clusters[c] = {"name": c, "endpoints": [], "unresolved": True}
                    else:
                        clusters[c] = {"name": c, "endpoints": []}

    for sp in mesh.services:
        if sp.protocol == "tcp":
            continue  # opaque TCP services need interception or a port of their own
        clusters[sp.cluster_name] = service_cluster(sp, connect_ms)
        target = (sp.key, sp.port)
        host = _host(sp, attached.producer.get(target), rendered)
        hosts.append(host)
        need(host)
        for ns in sorted(attached.consumer):
            routes = attached.consumer[ns].get(target)
            if routes is not None:
                own = _host(sp, routes, rendered)
                consumer_hosts.setdefault(ns, []).append(own)
                need(own)
    if not hosts:
        return Outbound([], [], {})
    return Outbound([{"name": "outbound", "virtual_hosts": hosts}],
                    [clusters[k] for k in sorted(clusters)], consumer_hosts)


__all__ = ["ALPN", "MESH_BUNDLE", "MESH_IDENTITY", "Attached", "Outbound", "outbound_shared",
           "rule", "service_cluster", "upstream_mtls"]
