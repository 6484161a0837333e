"""One snapshot for a node that fronts several workloads (the per-node agent, issue 11).

The compiler stays per workload: it compiles one snapshot per `Workload` as it always has.  A
proxy whose hello names further workloads (`Hello.workloads`) is sent the *merge* of their
snapshots, built here:

* every listener is tagged with the workload it carries (`Listener.workload`), and so is every
  cluster a listener names directly (the workload's inbound side, `Cluster.workload`);
* resources with the same name and the same content in several workloads (the outbound route
  table and its clusters: the compiler shares them) are kept once, the very same object;
* a name two workloads use for different content (`inbound|8080` on two addresses, each
  workload's `outbound` listener) is made unique per workload, `namespace/name|<name>`, and the
  references inside that workload's resources (listener -> route table / cluster, route rule ->
  cluster) follow the rename;
* each further workload's TLS settings present its own certificate
  (`identities[name=workload:<namespace>/<name>]`, filled by the proxy, ADR 0032), so
  its outbound clusters differ from the first workload's and are renamed, as above;
* node, admin and settings are the first workload's; the compiler makes settings and admin
  mesh-wide, so workloads that disagree are an error (`NodeError`), never a silent pick.
* a pod of the node with an inbound listener on the agent is reached by the node's other
  pods at a loopback alias (`agent_inbound_alias`), which `tulle iptables node apply` DNATs to
  that listener: every cluster but the pods' own inbound ones dials the alias instead of the
  pod's address, so a call between two pods of one agent leaves with the caller's
  certificate and is terminated with the callee's (ADR 0050);
* the node runs one mesh DNS resolver: the workloads' `dns` sections must agree but for their
  `clients` (each agent-mode pod names itself, `compiler/dns.py`), which are joined, so each
  pod's bare names resolve in its own namespace (ADR 0050); sections that differ otherwise (a
  port, the hosts) are a `NodeError`.

The merged version is a digest of the parts' versions, so it changes exactly when a part does.
Listeners of two workloads on one address and port cannot share a proxy: that is a
`NodeError` naming both workloads and the port, not a snapshot the proxy would NACK.  The
common case is two transparent workloads on one node agent, each with the default outbound
port 15001: in agent mode every pod needs an `outboundPort` of its own, the port its traffic is
steered to and by which the agent knows the pod (ADR 0047).  A `transparent` workload with
inbound ports is refused too: its inbound listener sits on the pod's own address, which the node
does not hold; a pod served by an agent says `interception: agent`, which puts that listener
on the agent's loopback at the pod's `inboundPort`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

from tulle.proxyconfig.model import DNS, Cluster, Listener, ProxyConfig, RouteTable, TLSContext
from tulle.proxyconfig.reserved import (
    WORKLOAD_IDENTITY,
    agent_inbound_alias,
    workload_identity,
)

ProxyKey = tuple[str, str]


class NodeError(ValueError):
    """The workloads of a node cannot share one snapshot."""


def workload_name(key: ProxyKey) -> str:
    return f"{key[0]}/{key[1]}"


def node_version(parts: Sequence[tuple[ProxyKey, ProxyConfig]]) -> str:
    h = hashlib.sha256()
    for key, cfg in parts:
        h.update(f"{workload_name(key)}={cfg.version};".encode())
    return "node-" + h.hexdigest()[:20]


def _renames(per: list[list[Any]]) -> list[dict[str, str]]:
    """For each workload's list of one collection, the names to make unique: those another
    workload uses for different content."""
    seen: dict[str, Any] = {}
    clash: set[str] = set()
    for items in per:
        for x in items:
            o = seen.setdefault(x.name, x)
            if o is not x and o != x:
                clash.add(x.name)
    return [{} for _ in per] if not clash else [
        {x.name: "" for x in items if x.name in clash} for items in per]


def _unique(key: ProxyKey, name: str) -> str:
    return f"{workload_name(key)}|{name}"


def _table(t: RouteTable, clusters: dict[str, str]) -> RouteTable:
    if not clusters:
        return t
    hosts = []
    for vh in t.virtual_hosts:
        rules = []
        for r in vh.rules:
            rules.append(msgspec.structs.replace(r, backends=[
                msgspec.structs.replace(b, cluster=clusters[b.cluster])
                if b.cluster in clusters else b for b in r.backends])
                if any(b.cluster in clusters for b in r.backends) else r)
        hosts.append(msgspec.structs.replace(vh, rules=rules)
                     if any(a is not b for a, b in zip(rules, vh.rules, strict=True)) else vh)
    if all(a is b for a, b in zip(hosts, t.virtual_hosts, strict=True)):
        return t  # no rule names a renamed cluster: the very same table
    return msgspec.structs.replace(t, virtual_hosts=hosts)


def _listener(lc: Listener, wl: str, tables: dict[str, str],
              clusters: dict[str, str]) -> Listener:
    dests = [msgspec.structs.replace(d, route_table=tables.get(d.route_table, d.route_table),
                                     cluster=clusters.get(d.cluster, d.cluster))
             for d in lc.destinations] if (tables or clusters) else lc.destinations
    chains = [msgspec.structs.replace(fc, route_table=tables.get(fc.route_table, fc.route_table),
                                      cluster=clusters.get(fc.cluster, fc.cluster))
              for fc in lc.filter_chains] if (tables or clusters) else lc.filter_chains
    return msgspec.structs.replace(
        lc, workload=wl, route_table=tables.get(lc.route_table, lc.route_table),
        cluster=clusters.get(lc.cluster, lc.cluster), destinations=dests,
        filter_chains=chains)


def _tls(tls: TLSContext | None, name: str) -> TLSContext | None:
    if tls is None or tls.identity != WORKLOAD_IDENTITY:
        return tls
    return msgspec.structs.replace(tls, identity=name)


def _own_identity(cfg: ProxyConfig, key: ProxyKey) -> ProxyConfig:
    """`cfg` (a further workload's part) with its TLS settings presenting that workload's own
    certificate, not the node's first one.  A cluster shared with another workload then
    differs from it and is renamed per workload: each workload's traffic leaves with its own
    identity."""
    name = workload_identity(*key, first=False)

    def listener(lc: Listener) -> Listener:
        chains = [msgspec.structs.replace(fc, tls=_tls(fc.tls, name))
                  if fc.tls is not None and fc.tls.identity == WORKLOAD_IDENTITY else fc
                  for fc in lc.filter_chains]
        tls = _tls(lc.tls, name)
        if tls is lc.tls and all(a is b for a, b in zip(chains, lc.filter_chains, strict=True)):
            return lc
        return msgspec.structs.replace(lc, tls=tls, filter_chains=chains)

    listeners = [listener(lc) for lc in cfg.listeners]
    clusters = [msgspec.structs.replace(c, tls=_tls(c.tls, name))
                if c.tls is not None and c.tls.identity == WORKLOAD_IDENTITY else c
                for c in cfg.clusters]
    if all(a is b for a, b in zip(listeners, cfg.listeners, strict=True)) and all(
            a is b for a, b in zip(clusters, cfg.clusters, strict=True)):
        return cfg
    return msgspec.structs.replace(cfg, listeners=listeners, clusters=clusters)


def merge(parts: Sequence[tuple[ProxyKey, ProxyConfig]]) -> ProxyConfig:
    """One snapshot serving every workload of `parts` (the first is the node's own)."""
    if not parts:
        raise NodeError("a node needs at least one workload")
    first = parts[0][1]
    for key, cfg in parts[1:]:
        if cfg.settings != first.settings or cfg.admin != first.admin:
            raise NodeError(f"workload {workload_name(key)} has other settings or admin than "
                            f"{workload_name(parts[0][0])}: they cannot share a proxy")
    for key, cfg in parts:
        for lc in cfg.listeners:
            if lc.mode == "transparent" and lc.direction == "inbound" and \
                    lc.address != "127.0.0.1":
                raise NodeError(
                    f"workload {workload_name(key)} is transparent with inbound ports "
                    f"(listener {lc.name} on {lc.address}:{lc.port}: a sidecar's, taking what "
                    "iptables redirects inside the pod, where a node agent is not): a pod "
                    "served by a node agent says "
                    "`interception: agent` (and its own inboundPort)")
    parts = [parts[0], *((key, _own_identity(cfg, key)) for key, cfg in parts[1:])]
    # Inbound clusters first: a cluster a listener names belongs to that listener's workload.
    tagged: list[list[Cluster]] = []
    for key, cfg in parts:
        own = {lc.cluster for lc in cfg.listeners} | {
            d.cluster for lc in cfg.listeners for d in lc.destinations} | {
            fc.cluster for lc in cfg.listeners for fc in lc.filter_chains}
        own.discard("")
        wl = workload_name(key)
        tagged.append([msgspec.structs.replace(c, workload=wl) if c.name in own else c
                       for c in cfg.clusters])
    tagged = _dial_local_pods_by_alias(parts, tagged)
    c_ren = _renames(tagged)
    c_maps = [{n: _unique(key, n) for n in ren} for (key, _), ren in zip(parts, c_ren,
                                                                           strict=True)]
    tables = [[_table(t, m) for t in cfg.route_tables]
              for (_, cfg), m in zip(parts, c_maps, strict=True)]
    t_maps = [{n: _unique(key, n) for n in ren}
              for (key, _), ren in zip(parts, _renames(tables), strict=True)]
    listeners = [[_listener(lc, workload_name(key), tm, cm) for lc in cfg.listeners]
                 for (key, cfg), tm, cm in zip(parts, t_maps, c_maps, strict=True)]
    _check_addresses(parts, listeners)
    l_maps = [{n: _unique(key, n) for n in ren}
              for (key, _), ren in zip(parts, _renames(listeners), strict=True)]
    return msgspec.structs.replace(
        first, version=node_version(parts),
        listeners=_collect(listeners, l_maps),
        route_tables=_collect(tables, t_maps),
        clusters=_collect(tagged, c_maps), dns=_dns(parts))


def _dns(parts: Sequence[tuple[ProxyKey, ProxyConfig]]) -> DNS | None:
    """The node's one resolver: the workloads' sections with their `clients` joined."""
    with_dns = [(key, cfg.dns) for key, cfg in parts if cfg.dns is not None]
    if not with_dns:
        return None
    key0, base = with_dns[0]
    if len(with_dns) == 1:
        return base
    bare = msgspec.structs.replace(base, clients=[], hosts=[])
    clients = {c.address: c for c in base.clients}
    for key, d in with_dns[1:]:
        if d is not base and (msgspec.structs.replace(d, clients=[], hosts=[]) != bare or (
                d.hosts is not base.hosts and d.hosts != base.hosts)):
            where = (f"port {base.port} vs {d.port}" if d.port != base.port else
                     "address" if d.address != base.address else "settings or hosts")
            raise NodeError(f"workloads {workload_name(key0)} and {workload_name(key)} run the "
                            f"mesh DNS resolver differently ({where}): a node runs one")
        for c in d.clients:
            seen = clients.setdefault(c.address, c)
            if seen != c:
                raise NodeError(f"workload {workload_name(key)}: DNS client {c.address} is "
                                f"also in namespace {seen.namespace}")
    return msgspec.structs.replace(base, clients=list(clients.values()))


def _inbound_clusters(cfg: ProxyConfig) -> dict[int, set[str]]:
    """Per inbound port on the agent's loopback: the clusters its chains name (the pod's
    application)."""
    out: dict[int, set[str]] = {}
    for lc in cfg.listeners:
        if lc.direction != "inbound" or lc.mode != "transparent" or lc.address != "127.0.0.1":
            continue
        names = {lc.cluster, *(fc.cluster for fc in lc.filter_chains)}
        tables = {lc.route_table, *(fc.route_table for fc in lc.filter_chains)}
        names |= {b.cluster for t in cfg.route_tables if t.name in tables
                  for vh in t.virtual_hosts for r in vh.rules for b in r.backends}
        names.discard("")
        out.setdefault(lc.port, set()).update(names)
    return out


def _dial_local_pods_by_alias(parts: Sequence[tuple[ProxyKey, ProxyConfig]],
                              tagged: list[list[Cluster]]) -> list[list[Cluster]]:
    """Endpoints at the address of a pod this node serves inbound point at that pod's
    loopback alias, in every cluster but the pods' own inbound ones."""
    alias: dict[str, str] = {}
    inbound: set[str] = set()
    for (_, cfg), clusters in zip(parts, tagged, strict=True):
        for port, names in _inbound_clusters(cfg).items():
            inbound |= names
            for c in clusters:
                if c.name in names:
                    for e in c.endpoints:
                        alias[e.address] = agent_inbound_alias(port)
    if not alias:
        return tagged

    def rewrite(c: Cluster) -> Cluster:
        if c.name in inbound or not any(e.address in alias for e in c.endpoints):
            return c
        return msgspec.structs.replace(c, endpoints=[
            msgspec.structs.replace(e, address=alias[e.address]) if e.address in alias else e
            for e in c.endpoints])

    return [[rewrite(c) for c in clusters] for clusters in tagged]


def _check_addresses(parts: Sequence[tuple[ProxyKey, ProxyConfig]],
                     listeners: list[list[Listener]]) -> None:
    """Refuse two workloads listening on one address and port (ADR 0047)."""
    owner: dict[tuple[str, int], tuple[ProxyKey, str]] = {}
    for (key, _), items in zip(parts, listeners, strict=True):
        for lc in items:
            other = owner.setdefault((lc.address, lc.port), (key, lc.name))
            if other[0] != key:
                hint = (" (give each workload its own outboundPort: in agent mode a pod's "
                        "traffic is steered to its own port)") if lc.name == "outbound" else ""
                raise NodeError(
                    f"workloads {workload_name(other[0])} (listener {other[1]}) and "
                    f"{workload_name(key)} (listener {lc.name}) both listen on "
                    f"{lc.address}:{lc.port}: they cannot share a proxy{hint}")


def _collect(per: list[list[Any]], maps: list[dict[str, str]]) -> list[Any]:
    """The union of the workloads' resources, renamed where they clash, each shared one once."""
    out: dict[str, Any] = {}
    for items, m in zip(per, maps, strict=True):
        for x in items:
            name = m.get(x.name, x.name)
            if name not in out:
                out[name] = x if name == x.name else msgspec.structs.replace(x, name=name)
    return list(out.values())


class NodeSnapshots:
    """The merged snapshot of one node, rebuilt only when one of its parts changed."""

    __slots__ = ("_last", "_parts", "keys")

    def __init__(self, keys: Sequence[ProxyKey]) -> None:
        self.keys = list(keys)
        self._parts: tuple[ProxyConfig, ...] = ()
        self._last: ProxyConfig | None = None

    def current(self, get: Any) -> ProxyConfig | None:
        """The node's snapshot from `get(key) -> ProxyConfig | None`; None until every
        workload has one.  Raises NodeError when they cannot be merged."""
        parts = tuple(get(k) for k in self.keys)
        if any(p is None for p in parts):
            return None
        if len(parts) == 1:
            self._parts = parts
            return parts[0]  # type: ignore[no-any-return]
        if self._last is None or len(parts) != len(self._parts) or any(
                a is not b for a, b in zip(parts, self._parts, strict=True)):
            self._last = merge(list(zip(self.keys, parts, strict=True)))
            self._parts = parts
        return self._last

    def parts(self) -> tuple[ProxyConfig, ...]:
        """The workloads' snapshots behind the last `current()`, in `keys` order."""
        return self._parts
