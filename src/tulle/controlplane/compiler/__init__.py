"""Resources + discovered endpoints -> one `ProxyConfig` per proxy.  Pure and deterministic.

The steps run in one declared order (`ORDER`), each a module of its own:

1. services — every Service port: its cluster (endpoints from workload selection) and names;
2. routes   — HTTPRoute / GRPCRoute attached to Services replace those Services' default rules;
   policies — targetRef policies are resolved; none is enforced yet, and their status says so;
3. proxies  — per workload: its inbound listeners and clusters, then the outbound listener,
              which shares one route table and one cluster list with every other proxy.

Policies attached by `targetRef` (traffic management, zero trust) become further steps between
2 and 3, each rewriting the shared artefacts before they are assembled per proxy.

Cost: the outbound side (all services, all routes) is built, checked and hashed once per
compilation and shared by reference between snapshots; per proxy only its own inbound side is
built and checked.  Same inputs, same bytes: collections are sorted by key, and a snapshot's
`version` is a hash of its content, so an unchanged proxy keeps its version and gets no push.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, key_of
from tulle.controlplane.compiler.policies import policy_conditions
from tulle.controlplane.compiler.proxies import inbound, outbound_listener, outbound_shared
from tulle.controlplane.compiler.routes import Condition, compile_routes
from tulle.controlplane.compiler.services import service_ports
from tulle.proxyconfig.model import Cluster, Listener, Node, ProxyConfig, RouteTable
from tulle.proxyconfig.validate import ConfigError, check

ORDER = ("services", "routes", "policies", "proxies")


@dataclass
class CompileResult:
    snapshots: dict[Key, ProxyConfig] = field(default_factory=dict)
    conditions: dict[tuple[str, str, str], list[Condition]] = field(default_factory=dict)
    """Status conditions per (kind, namespace, name) of the resources that have them."""
    errors: dict[Key, str] = field(default_factory=dict)
    """Proxies whose snapshot could not be built (and why); the others are unaffected."""


@dataclass(frozen=True)
class Shared:
    """The outbound artefacts every proxy gets, built once."""

    tables: list[RouteTable]
    clusters: list[Cluster]
    digest: bytes


def _digest(value: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).digest()


def build_shared(tables_raw: list[dict[str, Any]], clusters_raw: list[dict[str, Any]],
                 cache: PartCache | None = None) -> Shared:
    if cache is None:
        tables = [msgspec.convert(t, RouteTable) for t in tables_raw]
        clusters = [msgspec.convert(c, Cluster) for c in clusters_raw]
    else:
        tables = [cache.struct(t, RouteTable) for t in tables_raw]
        clusters = [cache.struct(c, Cluster) for c in clusters_raw]
        cache.end_round()
    # Check the shared part once (route references, names) as a config of its own.
    check(ProxyConfig(route_tables=tables, clusters=clusters))
    return Shared(tables, clusters, _digest([tables, clusters]))


@dataclass(frozen=True)
class OwnPart:
    """What a proxy gets from its own workload alone."""

    node: Node
    listeners: list[Listener]
    clusters: list[Cluster]
    digest: bytes


class PartCache:
    """Per-workload parts from the previous compilation, keyed by the workload's content.

    It makes recompilation incremental — a change to one Service rebuilds no proxy's own part,
    only the shared outbound part once — without changing the output: a hit returns exactly
    what a rebuild would.
    """

    def __init__(self) -> None:
        self._parts: dict[Key, tuple[bytes, bool, OwnPart]] = {}
        self._structs: dict[bytes, Any] = {}
        self._next_structs: dict[bytes, Any] = {}

    def struct(self, raw: dict[str, Any], typ: type[Any]) -> Any:
        """The same object as last time for the same content, so that unchanged resources are
        shared by reference across compilations (and deltas compare them by identity)."""
        k = typ.__name__.encode() + msgspec.json.encode(raw)
        obj = self._structs.get(k)
        if obj is None:
            obj = msgspec.convert(raw, typ)
        self._next_structs[k] = obj
        return obj

    def end_round(self) -> None:
        self._structs, self._next_structs = self._next_structs, {}

    def get(self, key: Key, fingerprint: bytes, has_outbound: bool) -> OwnPart | None:
        hit = self._parts.get(key)
        if hit is not None and hit[0] == fingerprint and hit[1] == has_outbound:
            return hit[2]
        return None

    def put(self, key: Key, fingerprint: bytes, has_outbound: bool, part: OwnPart) -> None:
        self._parts[key] = (fingerprint, has_outbound, part)

    def retain(self, keys: set[Key]) -> None:
        for k in [k for k in self._parts if k not in keys]:
            del self._parts[k]


def own_part(workload: Resource, has_outbound: bool) -> OwnPart:
    ns, name = key_of(workload)
    in_listeners_raw, in_clusters_raw = inbound(workload)
    listeners = [msgspec.convert(x, Listener) for x in in_listeners_raw]
    own_clusters = [msgspec.convert(x, Cluster) for x in in_clusters_raw]
    if has_outbound:
        listeners.append(msgspec.convert(outbound_listener(workload), Listener))
    labels = (workload.get("metadata") or {}).get("labels") or {}
    node = Node(name=name, namespace=ns, service=labels.get("app", ""))
    # The proxy's own part, checked on its own (the outbound table stands in by name).
    check(ProxyConfig(listeners=listeners, clusters=own_clusters,
                      route_tables=[RouteTable(name="outbound")] if has_outbound else []))
    return OwnPart(node, listeners, own_clusters, _digest([node, listeners, own_clusters]))


def compile_proxy(workload: Resource, shared: Shared, cache: PartCache | None = None) -> ProxyConfig:
    has_outbound = bool(shared.tables)
    part = None
    key = key_of(workload)
    if cache is not None:
        fingerprint = msgspec.json.encode(workload)
        part = cache.get(key, fingerprint, has_outbound)
    if part is None:
        part = own_part(workload, has_outbound)
        if cache is not None:
            cache.put(key, fingerprint, has_outbound, part)
    version = hashlib.sha256(part.digest + shared.digest).hexdigest()[:16]
    return ProxyConfig(version=version, node=part.node, listeners=part.listeners,
                       route_tables=shared.tables, clusters=part.clusters + shared.clusters)


def compile_mesh(m: MeshInputs, cache: PartCache | None = None) -> CompileResult:
    """Compile the whole mesh.  With a `cache` from the previous call, proxies whose workload
    did not change reuse their own part; the result is identical either way."""
    result = CompileResult()
    svc_ports = {k: {sp.port: sp for sp in service_ports(m, k, s)}
                 for k, s in sorted(m.services.items())}
    all_ports = [sp for k in sorted(svc_ports) for _, sp in sorted(svc_ports[k].items())]
    routes = compile_routes(m, svc_ports)
    result.conditions.update(routes.conditions)
    result.conditions.update(policy_conditions(m))
    tables_raw, clusters_raw = outbound_shared(all_ports, routes.rules)
    shared = build_shared(tables_raw, clusters_raw, cache)
    for key in sorted(m.workloads):
        try:
            result.snapshots[key] = compile_proxy(m.workloads[key], shared, cache)
        except (ConfigError, msgspec.ValidationError) as exc:
            result.errors[key] = str(exc)
    if cache is not None:
        cache.retain(set(m.workloads))
    return result


__all__ = ["ORDER", "CompileResult", "MeshInputs", "PartCache", "compile_mesh", "compile_proxy"]
