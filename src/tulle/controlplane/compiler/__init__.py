"""Resources + discovered endpoints -> one `ProxyConfig` per proxy.  Pure and deterministic.

Three steps, each over typed values (`ir.py`), never the user's dicts between them:

1. derive  — the mesh model, once per compilation: Service ports with their protocols and
             endpoints (`services`), routes attached to them (`routes`), targetRef policies
             with their targets resolved (`policies`), one proxy per workload (`proxies`);
2. plugins — each policy kind edits the model, in the order declared in `plugins/__init__.py`
             (header modifiers, route timeouts, unclaimed filters, unenforced policies...);
3. render  — the outbound side (all services, all routes: `outbound`) once, shared by every
             snapshot; per proxy only its own inbound side (`proxies`); status conditions
             from the model (`status`).  Transparent workloads (ADR 0044) add the listener on
             15001 with its per-Service tables and clusters (`transparent`), also once.

Cost: the outbound side is built, checked and hashed once per compilation and shared by
reference between snapshots; per proxy only its own inbound side is built and checked, and
with a `PartCache` not even that when the proxy's model is unchanged.  Same inputs, same
bytes: collections are sorted by key, and a snapshot's `version` is a hash of its content, so
an unchanged proxy keeps its version and gets no push.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tulle.controlplane.compiler import plugins
from tulle.controlplane.compiler.addresses import address_conditions
from tulle.controlplane.compiler.dns import DnsHosts, dns_hosts, dns_section
from tulle.controlplane.compiler.inbound_protocols import with_service_protocols
from tulle.controlplane.compiler.inputs import Key, MeshInputs
from tulle.controlplane.compiler.ir import MeshModel, Proxy, ProxyDefaults
from tulle.controlplane.compiler.logs import MeshLogs, mesh_logs
from tulle.controlplane.compiler.logs import principal as log_principal
from tulle.controlplane.compiler.outbound import MESH_BUNDLE, MESH_IDENTITY, outbound_shared
from tulle.controlplane.compiler.policies import derive_mesh, derive_policies
from tulle.controlplane.compiler.proxies import (
    DEFAULT_OUTBOUND_PORT,
    ProxyMemo,
    derive_proxies,
    inbound,
    inbound_tables,
    outbound_listener,
)
from tulle.controlplane.compiler.routes import derive_grants, derive_routes, derive_tcp_routes
from tulle.controlplane.compiler.services import ServiceMemo, derive_services
from tulle.controlplane.compiler.status import conditions
from tulle.controlplane.compiler.telemetry import MeshTelemetry, mesh_telemetry, telemetry_section
from tulle.controlplane.compiler.transparent import (
    OUTBOUND_ADDRESS6,
    agent_cluster,
    inbound_listener,
    render_outbound,
)
from tulle.proxyconfig.model import (
    Admin,
    Cluster,
    Destination,
    Identity,
    Listener,
    Node,
    ProxyConfig,
    RouteTable,
    Settings,
    TLSContext,
    TrustBundle,
    VirtualHost,
)
from tulle.proxyconfig.reserved import is_reserved_identity
from tulle.proxyconfig.validate import ConfigError, check

_DEFAULT_SETTINGS = Settings()
_DEFAULT_ADMIN = Admin()

_STAND_INS: dict[str, Any] = {
    "identities": [Identity(name=MESH_IDENTITY,
                            cert_chain_pem="-----BEGIN CERTIFICATE-----stand-in",
                            private_key_pem="-----BEGIN PRIVATE KEY-----stand-in")],
    "trust_bundles": [TrustBundle(name=MESH_BUNDLE,
                                  ca_pems=["-----BEGIN CERTIFICATE-----stand-in"])]}
"""The sections each proxy fills itself (its SVID, the mesh roots: ADR 0028), standing in by
name when the compiler checks what it rendered — they are never sent."""

ORDER = ("services", "routes", "policies", "proxies", "plugins", "render")
"""The compiler's steps; the plugins' own order is `plugins.ORDER`."""


@dataclass
class CompileResult:
    snapshots: dict[Key, ProxyConfig] = field(default_factory=dict)
    conditions: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    """Status conditions per (kind, namespace, name) of the resources that have them."""
    errors: dict[Key, str] = field(default_factory=dict)
    """Proxies whose snapshot could not be built (and why); the others are unaffected."""


@dataclass(frozen=True)
class Shared:
    """The outbound artefacts every proxy gets, built once."""

    tables: list[RouteTable]
    clusters: list[Cluster]
    digest: bytes
    settings: Settings = _DEFAULT_SETTINGS
    by_namespace: dict[str, tuple[list[RouteTable], bytes]] = field(default_factory=dict)
    """The tables (and digest) of the proxies of a namespace that has consumer routes: the
    same table objects but for the hosts those routes change (GAMMA; ADR 0023)."""
    dns: DnsHosts = field(default_factory=DnsHosts)
    """The mesh DNS hosts, for the proxies that run a resolver (`compiler/dns.py`)."""

    transparent: Transparent | None = None
    """The outbound side of transparent proxies (ADR 0044); None when the mesh has none."""
    telemetry: MeshTelemetry = field(default_factory=lambda: MeshTelemetry(enabled=False))
    """What every proxy's `telemetry` section shares (`compiler/telemetry.py`)."""
    logs: MeshLogs = field(default_factory=MeshLogs)
    """Every proxy's access and flow log settings (`compiler/logs.py`, ADR 0054)."""

    def for_namespace(self, ns: str) -> tuple[list[RouteTable], bytes]:
        """The tables a proxy in `ns` gets, and the digest that stands for them."""
        own = self.by_namespace.get(ns)
        return own if own is not None else (self.tables, self.digest)


@dataclass(frozen=True)
class Transparent:
    """What a transparent proxy gets on top of `Shared` (`transparent.py`), built once: the
    listener on 15001, one route table per HTTP Service port, the clusters only it names."""

    listener: Listener
    tables: list[RouteTable]
    clusters: list[Cluster]
    digest: bytes
    by_namespace: dict[str, tuple[list[RouteTable], bytes]] = field(default_factory=dict)
    clusters_by_namespace: dict[str, tuple[list[Cluster], bytes]] = field(default_factory=dict)
    """Client namespace -> its clusters where consumer TCPRoutes change some (same names), and
    the digest that adds."""
    agent_listener: Listener | None = None
    """`listener` with the destinations a node agent's pod listener refuses after the others
    (`transparent.agent_refusals`, ADR 0114); None: the same as `listener`."""
    agent_digest: bytes = b""

    def for_agent(self) -> tuple[Listener, bytes]:
        """The outbound listener of an `interception: agent` workload, and what it adds to
        the digest."""
        if self.agent_listener is None:
            return self.listener, b""
        return self.agent_listener, self.agent_digest

    def for_namespace(self, ns: str) -> tuple[list[RouteTable], bytes]:
        own = self.by_namespace.get(ns)
        return own if own is not None else (self.tables, self.digest)

    def clusters_for(self, ns: str) -> tuple[list[Cluster], bytes]:
        own = self.clusters_by_namespace.get(ns)
        return own if own is not None else (self.clusters, b"")


def build_transparent(listener_raw: dict[str, Any], tables_raw: list[dict[str, Any]],
                      clusters_raw: list[dict[str, Any]], shared_clusters: list[Cluster],
                      consumer_raw: dict[str, list[dict[str, Any]]],
                      consumer_clusters_raw: dict[str, list[dict[str, Any]]] | None = None,
                      refusals_raw: Sequence[dict[str, Any]] = ()) -> Transparent:
    """Convert and check the transparent outbound side once; per client namespace with
    consumer routes, its own versions of the tables those routes change (same names); the
    node agent's version of the listener when there are `refusals_raw`."""
    listener = msgspec.convert(listener_raw, Listener)
    tables = [msgspec.convert(t, RouteTable) for t in tables_raw]
    clusters = [msgspec.convert(c, Cluster) for c in clusters_raw]
    check(ProxyConfig(listeners=[listener], route_tables=tables,
                      clusters=shared_clusters + clusters, **_STAND_INS))
    digest = _digest([listener, tables, clusters])
    agent_listener, agent_digest = None, b""
    if refusals_raw:
        refusals = [msgspec.convert(r, Destination) for r in refusals_raw]
        agent_listener = msgspec.structs.replace(
            listener, destinations=[*listener.destinations, *refusals])
        check(ProxyConfig(listeners=[agent_listener], route_tables=tables,
                          clusters=shared_clusters + clusters, **_STAND_INS))
        agent_digest = _digest(refusals)
    by_ns: dict[str, tuple[list[RouteTable], bytes]] = {}
    for ns, hosts_raw in consumer_raw.items():
        own = {vh.name: vh for vh in (msgspec.convert(h, VirtualHost) for h in hosts_raw)}
        merged = [RouteTable(name=t.name, virtual_hosts=[own[t.virtual_hosts[0].name]])
                  if t.virtual_hosts and t.virtual_hosts[0].name in own else t for t in tables]
        check(ProxyConfig(listeners=[listener], route_tables=merged,
                          clusters=shared_clusters + clusters, **_STAND_INS))
        by_ns[ns] = (merged, hashlib.sha256(digest + _digest(list(own.values()))).digest())
    clusters_by_ns: dict[str, tuple[list[Cluster], bytes]] = {}
    for ns, raw in (consumer_clusters_raw or {}).items():
        mine = {c.name: c for c in (msgspec.convert(r, Cluster) for r in raw)}
        merged_clusters = [mine.get(c.name, c) for c in clusters]
        check(ProxyConfig(listeners=[listener], route_tables=by_ns.get(ns, (tables, b""))[0],
                          clusters=shared_clusters + merged_clusters, **_STAND_INS))
        clusters_by_ns[ns] = (merged_clusters, _digest(list(mine.values())))
    return Transparent(listener, tables, clusters, digest, by_ns, clusters_by_ns,
                       agent_listener, agent_digest)


def check_compiled(cfg: ProxyConfig) -> None:
    """`check` for a compiled snapshot, whose TLS settings may name the sections the proxy
    fills itself (`_STAND_INS`; on a node's merged snapshot, each further workload's own
    `workload:<ns>/<name>` too, ADR 0032)."""
    stand_in = _STAND_INS["identities"][0]
    named = {t.identity for t in _tls_settings(cfg)} - {stand_in.name}
    node = [msgspec.structs.replace(stand_in, name=n) for n in sorted(named)
            if is_reserved_identity(n)]
    check(msgspec.structs.replace(
        cfg, identities=[*cfg.identities, *_STAND_INS["identities"], *node],
        trust_bundles=[*cfg.trust_bundles, *_STAND_INS["trust_bundles"]]))


def _tls_settings(cfg: ProxyConfig) -> list[TLSContext]:
    out = [c.tls for c in cfg.clusters if c.tls is not None]
    for lc in cfg.listeners:
        out += [t for t in (lc.tls, *(fc.tls for fc in lc.filter_chains)) if t is not None]
    return out


def _digest(value: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).digest()


def _namespace_tables(tables: list[RouteTable], clusters: list[Cluster], digest: bytes,
                      consumer_raw: dict[str, list[dict[str, Any]]],
                      cache: PartCache | None) -> dict[str, tuple[list[RouteTable], bytes]]:
    """Per client namespace with consumer routes: the shared table with that namespace's own
    hosts in place of the shared ones of the same name.  Every other host is the very same
    object as in the shared table, so a namespace costs its own hosts, not the mesh's: they
    alone are converted and checked, and its digest is the shared one plus theirs."""
    out: dict[str, tuple[list[RouteTable], bytes]] = {}
    for ns, hosts_raw in consumer_raw.items():
        own = [cache.struct(h, VirtualHost) if cache is not None
               else msgspec.convert(h, VirtualHost) for h in hosts_raw]
        check(ProxyConfig(route_tables=[RouteTable(name="outbound", virtual_hosts=own)],
                          clusters=clusters, **_STAND_INS))
        by_name = {vh.name: vh for vh in own}
        table = tables[0]
        merged = RouteTable(name=table.name, virtual_hosts=[
            by_name.get(vh.name, vh) for vh in table.virtual_hosts])
        out[ns] = ([merged], hashlib.sha256(digest + _digest(own)).digest())
    return out


def build_shared(tables_raw: list[dict[str, Any]], clusters_raw: list[dict[str, Any]],
                 cache: PartCache | None = None,
                 settings: Settings = _DEFAULT_SETTINGS,
                 consumer_raw: dict[str, list[dict[str, Any]]] | None = None) -> Shared:
    if cache is None:
        tables = [msgspec.convert(t, RouteTable) for t in tables_raw]
        clusters = [msgspec.convert(c, Cluster) for c in clusters_raw]
    else:
        tables = [cache.struct(t, RouteTable) for t in tables_raw]
        clusters = [cache.struct(c, Cluster) for c in clusters_raw]
    # Check the shared part once (route references, names) as a config of its own.
    check(ProxyConfig(route_tables=tables, clusters=clusters, **_STAND_INS))
    digest = (_digest([tables, clusters]) if settings == _DEFAULT_SETTINGS
              else _digest([tables, clusters, settings]))
    by_ns = (_namespace_tables(tables, clusters, digest, consumer_raw, cache)
             if consumer_raw and tables else {})
    if cache is not None:
        cache.end_round()
    return Shared(tables, clusters, digest, settings, by_ns)


@dataclass(frozen=True)
class OwnPart:
    """What a proxy gets from its own workload alone."""

    node: Node
    listeners: list[Listener]
    clusters: list[Cluster]
    digest: bytes
    route_tables: list[RouteTable] = field(default_factory=list)
    """Its inbound ports' own tables (authorization: `proxies.inbound_tables`)."""


class PartCache:
    """Per-workload parts from the previous compilation, keyed by the proxy's model.

    It makes recompilation incremental — a change to one Service rebuilds no proxy's own part,
    only the shared outbound part once — without changing the output: a hit returns exactly
    what a rebuild would.
    """

    def __init__(self) -> None:
        self._parts: dict[Key, tuple[Proxy, bool, OwnPart]] = {}
        self.proxies: ProxyMemo = {}
        """The proxy models of the previous derivation (`proxies.derive_proxies`)."""
        self.services: ServiceMemo = {}
        """The Service ports of the previous derivation (`services.derive_services`)."""
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

    def get(self, proxy: Proxy, has_outbound: bool) -> OwnPart | None:
        """The part rendered last time for an equal proxy model: its own part depends on
        nothing else (the model is the fingerprint)."""
        hit = self._parts.get(proxy.key)
        if hit is not None and hit[1] == has_outbound and (hit[0] is proxy or hit[0] == proxy):
            return hit[2]
        return None

    def put(self, proxy: Proxy, has_outbound: bool, part: OwnPart) -> None:
        self._parts[proxy.key] = (proxy, has_outbound, part)

    def retain(self, keys: set[Key]) -> None:
        for k in [k for k in self._parts if k not in keys]:
            del self._parts[k]


def own_part(proxy: Proxy, has_outbound: bool) -> OwnPart:
    in_listeners_raw, in_clusters_raw = inbound(proxy)
    transparent = proxy.intercepted
    if transparent:  # one listener on 15006; its outbound one is the mesh's (`Transparent`)
        if proxy.interception == "agent":  # on the node agent: the app is at the pod's address
            in_clusters_raw = [agent_cluster(c, proxy.address) for c in in_clusters_raw]
        one = inbound_listener(proxy, in_listeners_raw)
        in_listeners_raw = [one] if one is not None else []
    listeners = [msgspec.convert(x, Listener) for x in in_listeners_raw]
    own_clusters = [msgspec.convert(x, Cluster) for x in in_clusters_raw]
    own_tables = [msgspec.convert(x, RouteTable) for x in inbound_tables(proxy)]
    if has_outbound and not transparent:
        listeners.append(msgspec.convert(outbound_listener(proxy), Listener))
    node = Node(name=proxy.name, namespace=proxy.namespace, service=proxy.service,
                zone=proxy.metadata.zone)
    # The proxy's own part, checked on its own (the outbound table stands in by name).
    check(ProxyConfig(listeners=listeners, clusters=own_clusters,
                      route_tables=own_tables + ([RouteTable(name="outbound")] if has_outbound
                                                 else []), **_STAND_INS))
    parts: list[Any] = [node, listeners, own_clusters]
    if own_tables:  # (only then: the digest of a proxy without any stays what it was)
        parts.append(own_tables)
    return OwnPart(node, listeners, own_clusters, _digest(parts), own_tables)


def compile_proxy(proxy: Proxy, shared: Shared, cache: PartCache | None = None) -> ProxyConfig:
    has_outbound = bool(shared.tables)
    tables, digest = shared.for_namespace(proxy.namespace)
    part = None
    if cache is not None:
        part = cache.get(proxy, has_outbound)
    if part is None:
        part = own_part(proxy, has_outbound)
        if cache is not None:
            cache.put(proxy, has_outbound, part)
    listeners, clusters = part.listeners, part.clusters + shared.clusters
    t = shared.transparent
    if proxy.intercepted and t is not None:
        t_tables, t_digest = t.for_namespace(proxy.namespace)
        out, refusals_digest = (t.for_agent() if proxy.interception == "agent"
                                else (t.listener, b""))
        if out.port != proxy.outbound_port:
            out = msgspec.structs.replace(out, port=proxy.outbound_port)
        if proxy.interception == "transparent":  # a sidecar: ip6tables' redirect too (ADR 0088)
            out = msgspec.structs.replace(out, additional_addresses=[OUTBOUND_ADDRESS6])
        elif proxy.interception == "agent":
            # The node agent's listener for this pod lends the pod's identity: only the pod's
            # own connections (DNAT keeps their source) are taken (ADR 0098).
            out = msgspec.structs.replace(out, sources=[proxy.address,
                                                        *proxy.additional_addresses])
        t_clusters, c_digest = t.clusters_for(proxy.namespace)
        listeners, tables, clusters = [*listeners, out], tables + t_tables, clusters + t_clusters
        digest = hashlib.sha256(digest + t_digest + c_digest + refusals_digest
                                + str(out.port).encode()
                                + ",".join(out.additional_addresses).encode()
                                + ",".join(out.sources).encode()).digest()
    dns = dns_section(proxy, shared.dns)
    if dns is not None:  # (only then: other proxies' versions stay what they were)
        check(ProxyConfig(listeners=part.listeners, dns=dns, clusters=part.clusters,
                          route_tables=[*part.route_tables, RouteTable(name="outbound")],
                          **_STAND_INS))
        digest = hashlib.sha256(digest + shared.dns.digest + b"%d" % dns.port + "".join(
            f";{c.address}/{c.namespace}" for c in dns.clients).encode()).digest()
    admin = _DEFAULT_ADMIN
    if proxy.admin_port is not None and proxy.admin_port != _DEFAULT_ADMIN.port:
        admin = Admin(port=proxy.admin_port)
        digest = hashlib.sha256(digest + b"admin:%d" % proxy.admin_port).digest()
    tele = shared.telemetry
    telemetry = telemetry_section(proxy, tele)
    if telemetry.metrics is not None:  # (only then: with metrics off, versions stay as they were)
        own = msgspec.structs.replace(telemetry.metrics, peers=[])
        digest = hashlib.sha256(digest + tele.digest + msgspec.json.encode(own)).digest()
    if telemetry.tracing is not None:  # (only then: versions without it stay what they were)
        digest = hashlib.sha256(digest + msgspec.json.encode(telemetry.tracing)).digest()
    logs = shared.logs
    me = log_principal(proxy, logs)
    if logs.digest:  # (only then: with logs off, versions stay as they were)
        digest = hashlib.sha256(digest + logs.digest + me.encode()).digest()
    telemetry = msgspec.structs.replace(telemetry, access_log=logs.access, flow_log=logs.flow,
                                        principal=me)
    version = hashlib.sha256(part.digest + digest).hexdigest()[:16]
    return ProxyConfig(version=version, node=part.node, settings=shared.settings,
                       listeners=listeners,
                       route_tables=tables + part.route_tables if part.route_tables else tables,
                       clusters=clusters, dns=dns, admin=admin, telemetry=telemetry)


def settings(defaults: ProxyDefaults) -> Settings:
    """The process settings every proxy gets: its own defaults, but for what the model sets."""
    values = {k: v for k, v in (("request_timeout_ms", defaults.request_timeout_ms),
                                ("idle_timeout_ms", defaults.idle_timeout_ms),
                                ("drain_propagation_ms", defaults.drain_propagation_ms))
              if v is not None}
    return msgspec.convert(values, Settings) if values else _DEFAULT_SETTINGS


def derive(m: MeshInputs, cache: PartCache | None = None) -> MeshModel:
    """The mesh model of `m`, before any plugin ran.  With a `cache`, unchanged workloads
    keep their `Proxy` objects from the previous call."""
    proxies = derive_proxies(m, cache.proxies if cache is not None else None)
    services = derive_services(m, {p.key: p for p in proxies},
                               cache.services if cache is not None else None)
    proxies = with_service_protocols(proxies, services)
    return MeshModel(services=services, routes=derive_routes(m, services),
                     policies=derive_policies(m), proxies=proxies, mesh=derive_mesh(m),
                     tcp_routes=derive_tcp_routes(m, services), grants=derive_grants(m),
                     conditions=address_conditions(proxies, m.workloads))


def shared_part(mesh: MeshModel, cache: PartCache | None = None) -> Shared:
    """What every proxy of `mesh` (plugins applied) shares, built and checked once."""
    out = outbound_shared(mesh)
    shared = build_shared(out.tables, out.clusters, cache, settings(mesh.defaults),
                          out.consumer_hosts)
    if any(p.intercepted for p in mesh.proxies):
        t = render_outbound(mesh, out, DEFAULT_OUTBOUND_PORT)
        shared = dataclasses.replace(shared, transparent=build_transparent(
            t.listener, t.tables, t.clusters, shared.clusters, t.consumer_hosts,
            t.consumer_clusters, t.refusals))
    return dataclasses.replace(shared, dns=dns_hosts(mesh), telemetry=mesh_telemetry(mesh),
                               logs=mesh_logs(mesh))


def compile_model(mesh: MeshModel, cache: PartCache | None = None) -> CompileResult:
    """Render a model (plugins applied) into snapshots and conditions."""
    result = CompileResult(conditions=conditions(mesh))
    shared = shared_part(mesh, cache)
    for proxy in mesh.proxies:
        try:
            result.snapshots[proxy.key] = compile_proxy(proxy, shared, cache)
        except (ConfigError, msgspec.ValidationError) as exc:
            result.errors[proxy.key] = str(exc)
    if cache is not None:
        cache.retain({p.key for p in mesh.proxies})
    return result


def render_proxies(mesh: MeshModel, keys: Collection[Key]) -> dict[Key, ProxyConfig]:
    """The snapshots of the proxies `keys` of `mesh` (plugins applied), byte for byte what
    `compile_model` renders for them, without rendering the others' own parts: how a
    preview learns what a few proxies would run (apply's version-skew warnings, ADR 0125).
    Touches no `PartCache`; a proxy whose snapshot cannot be built is left out."""
    wanted = [p for p in mesh.proxies if p.key in keys]
    if not wanted:
        return {}
    shared = shared_part(mesh)
    out: dict[Key, ProxyConfig] = {}
    for proxy in wanted:
        try:
            out[proxy.key] = compile_proxy(proxy, shared)
        except (ConfigError, msgspec.ValidationError):
            continue  # (its error is the reconciler's to report, as it is now)
    return out


def compile_mesh(m: MeshInputs, cache: PartCache | None = None) -> CompileResult:
    """Compile the whole mesh.  With a `cache` from the previous call, proxies whose model did
    not change reuse their own part; the result is identical either way."""
    return compile_model(plugins.run(derive(m, cache)), cache)


__all__ = ["ORDER", "CompileResult", "MeshInputs", "MeshModel", "PartCache", "check_compiled",
           "compile_mesh", "compile_model", "compile_proxy", "derive", "render_proxies"]
