"""Deltas between two snapshots: what the push stream sends after the first full snapshot.

A snapshot's named collections (listeners, route tables, clusters) are diffed by name; the
singletons (node, admin, settings) are sent whole when they changed.  `apply_delta(base, d)`
rebuilds the exact new snapshot, so `apply_delta(a, diff(a, b)) == b` for any a and b — the
property the tests check with hypothesis-generated snapshots.  The result still goes through
validation on the proxy (a delta can be well-formed yet produce an invalid snapshot, which the
proxy NACKs).

Finer units (ADR 0018), each a config feature a proxy announces (`features.py`); `diff` uses
only the `units` it is given, and a proxy that lacks one gets whole resources as before:

* `delta-virtual-hosts`: a route table whose only change is in its virtual hosts is sent as
  the changed / removed virtual hosts (by name), not whole.  At 1,000 services the outbound
  table holds 1,000 virtual hosts (~400 KB) and a canary weight change touches one of them.
* `delta-endpoints`: a cluster whose only change is its endpoint list is sent as that list
  (Envoy's ClusterLoadAssignment), not with the rest of the cluster.
* `delta-positions`: resources added among the others carry their index (`at`) instead of
  the whole new name order; the full `order` is sent only when survivors really moved.

These refine the wire only: the snapshot model is unchanged, and `apply_delta` keeps every
untouched struct by identity (a patched route table keeps its other virtual hosts' objects, a
patched cluster its TLS struct), so the proxy's runtime build still finds them unchanged by
`is`.

Order within a collection is kept as in the new snapshot (listener order matters to nobody
today, but deterministic output keeps golden files and diffs stable).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from tulle.proxyconfig.dns_delta import (
    DNS_HOSTS,
    DnsHostsDelta,
    DnsHostsError,
    apply_hosts,
    diff_hosts,
)
from tulle.proxyconfig.model import (
    DNS,
    Admin,
    Cluster,
    Endpoint,
    Identity,
    Listener,
    Node,
    ProxyConfig,
    RouteTable,
    Settings,
    TrustBundle,
    VirtualHost,
)
from tulle.proxyconfig.telemetry import Telemetry

COLLECTIONS = ("listeners", "route_tables", "clusters", "identities", "trust_bundles")

VIRTUAL_HOSTS: Final = "delta-virtual-hosts"
ENDPOINTS: Final = "delta-endpoints"
POSITIONS: Final = "delta-positions"
UNITS: Final = frozenset({VIRTUAL_HOSTS, ENDPOINTS, POSITIONS, DNS_HOSTS})
"""The delta refinements this build speaks (each is also a `Feature` in `features.py`)."""
WHOLE: Final = frozenset[str]()
"""No refinement: changed resources sent whole (a proxy from before ADR 0018)."""


def units_of(announced: Iterable[str]) -> frozenset[str]:
    """The delta units a proxy that announced `announced` features takes."""
    return UNITS.intersection(announced)


class CollectionDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    upsert: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Full resources (as plain values) that are new or changed."""
    remove: list[str] = msgspec.field(default_factory=list)
    order: list[str] = msgspec.field(default_factory=list)
    """Names in the new snapshot's order (only when it changed)."""
    at: dict[str, int] = msgspec.field(default_factory=dict)
    """`delta-positions`: the index in the new list of each added resource, when the additions
    do not simply follow the survivors (and the survivors kept their order)."""


class VirtualHostsDelta(CollectionDelta, frozen=True, kw_only=True, omit_defaults=True):
    """`delta-virtual-hosts`: the virtual hosts of one route table, diffed by name."""

    route_table: str


class EndpointsDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`delta-endpoints`: the new endpoint list of one cluster, nothing else of it changed."""

    cluster: str
    endpoints: list[dict[str, Any]] = msgspec.field(default_factory=list)


class Delta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: str
    base_version: str
    node: dict[str, Any] | None = None
    admin: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    listeners: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    route_tables: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    clusters: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    virtual_hosts: list[VirtualHostsDelta] = msgspec.field(default_factory=list)
    """Route tables patched by virtual host (applied after `route_tables`)."""
    endpoints: list[EndpointsDelta] = msgspec.field(default_factory=list)
    """Clusters whose endpoint list is replaced (applied after `clusters`)."""
    identities: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    trust_bundles: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    dns: dict[str, Any] | None = None
    """The `dns` section, whole, when it changed (feature `dns`)."""
    dns_removed: bool = False
    """The new snapshot has no `dns` section (the old one had)."""
    dns_hosts: DnsHostsDelta | None = None
    """`delta-dns-hosts`: the `dns` section changed in its hosts alone (`dns_delta.py`)."""
    telemetry: dict[str, Any] | None = None
    """The `telemetry` section, whole, when it changed (feature `telemetry`)."""

    @property
    def empty(self) -> bool:
        return (self.node is None and self.admin is None and self.settings is None
                and self.dns is None and not self.dns_removed and self.dns_hosts is None
                and self.telemetry is None
                and not self.virtual_hosts and not self.endpoints
                and all(not getattr(self, c).upsert and not getattr(self, c).remove
                        and not getattr(self, c).order and not getattr(self, c).at
                        for c in COLLECTIONS))


def placement(old_names: list[str], new_names: list[str], positions: bool
              ) -> tuple[list[str], dict[str, int]]:
    """(`order`, `at`) that put a collection's names in the new order, both empty when
    survivors-then-additions (what `apply_delta` does unaided) is already it."""
    old_set = set(old_names)
    wanted = set(new_names)
    survivors = [n for n in old_names if n in wanted]
    added = [n for n in new_names if n not in old_set]
    if survivors + added == new_names:
        return [], {}
    if positions and [n for n in new_names if n in old_set] == survivors:
        return [], {n: i for i, n in enumerate(new_names) if n not in old_set}
    return list(new_names), {}


def changed_only_in(old: Any, new: Any, field: str) -> bool:
    """Whether `new` differs from `old` (same type) in `field` alone."""
    return type(old) is type(new) and msgspec.structs.replace(
        old, **{field: getattr(new, field)}) == new


def _diff_collection(old: list[Any], new: list[Any], positions: bool) -> CollectionDelta:
    old_by = {x.name: x for x in old}
    wanted = {x.name for x in new}
    # Snapshots of one compilation share unchanged resources by reference: `is` settles most
    # comparisons without walking the structs.
    upsert = []
    for x in new:
        o = old_by.get(x.name)
        if o is not x and o != x:
            upsert.append(msgspec.to_builtins(x))
    remove = [n for n in old_by if n not in wanted]
    order, at = placement(list(old_by), [x.name for x in new], positions)
    return CollectionDelta(upsert=upsert, remove=remove, order=order, at=at)


def _patches(old: list[Any], new: list[Any], field: str) -> dict[str, Any]:
    """The resources of `new` that exist in `old` under their name and differ from it only in
    `field`, by name."""
    old_by = {x.name: x for x in old}
    out = {}
    for x in new:
        o = old_by.get(x.name)
        if o is not None and o is not x and o != x and changed_only_in(o, x, field):
            out[x.name] = o
    return out


def diff(old: ProxyConfig, new: ProxyConfig, units: frozenset[str] = UNITS) -> Delta:
    """The delta that turns `old` into `new`, using the finer `units` (default: all)."""
    positions = POSITIONS in units
    tables = _diff_collection(old.route_tables, new.route_tables, positions)
    clusters = _diff_collection(old.clusters, new.clusters, positions)
    vhosts: list[VirtualHostsDelta] = []
    eps: list[EndpointsDelta] = []
    if VIRTUAL_HOSTS in units and tables.upsert:
        patched = _patches(old.route_tables, new.route_tables, "virtual_hosts")
        if patched:
            vhosts = [virtual_hosts_delta(patched[t.name], t, positions)
                      for t in new.route_tables if t.name in patched]
            tables = msgspec.structs.replace(
                tables, upsert=[u for u in tables.upsert if u["name"] not in patched])
    if ENDPOINTS in units and clusters.upsert:
        patched = _patches(old.clusters, new.clusters, "endpoints")
        if patched:
            eps = [EndpointsDelta(cluster=c.name, endpoints=msgspec.to_builtins(c.endpoints))
                   for c in new.clusters if c.name in patched]
            clusters = msgspec.structs.replace(
                clusters, upsert=[u for u in clusters.upsert if u["name"] not in patched])
    return Delta(
        version=new.version,
        base_version=old.version,
        node=None if old.node == new.node else msgspec.to_builtins(new.node),
        admin=None if old.admin == new.admin else msgspec.to_builtins(new.admin),
        settings=None if old.settings == new.settings else msgspec.to_builtins(new.settings),
        listeners=_diff_collection(old.listeners, new.listeners, positions),
        route_tables=tables,
        clusters=clusters,
        virtual_hosts=vhosts,
        endpoints=eps,
        identities=_diff_collection(old.identities, new.identities, positions),
        trust_bundles=_diff_collection(old.trust_bundles, new.trust_bundles, positions),
        **dns_fields(old, new, units),
        telemetry=telemetry_field(old, new),
    )


def telemetry_field(old: ProxyConfig, new: ProxyConfig) -> dict[str, Any] | None:
    """The `Delta.telemetry` of a change (`diff` and the push's frames share it)."""
    if old.telemetry is new.telemetry or old.telemetry == new.telemetry:
        return None
    return msgspec.to_builtins(new.telemetry)  # type: ignore[no-any-return]


def dns_fields(old: ProxyConfig, new: ProxyConfig, units: frozenset[str]) -> dict[str, Any]:
    """The `Delta` fields for the `dns` section (`diff` and the push's frames share them)."""
    if new.dns is None:
        return {"dns_removed": True} if old.dns is not None else {}
    if old.dns is new.dns or old.dns == new.dns:
        return {}
    if DNS_HOSTS in units and old.dns is not None and changed_only_in(old.dns, new.dns,
                                                                      "hosts"):
        return {"dns_hosts": diff_hosts(old.dns.hosts, new.dns.hosts)}
    return {"dns": msgspec.to_builtins(new.dns)}


def virtual_hosts_delta(old: RouteTable, new: RouteTable, positions: bool) -> VirtualHostsDelta:
    """The virtual-host patch that turns route table `old` into `new` (same name, nothing but
    virtual hosts changed)."""
    d = _diff_collection(old.virtual_hosts, new.virtual_hosts, positions)
    return VirtualHostsDelta(route_table=new.name, upsert=d.upsert, remove=d.remove,
                             order=d.order, at=d.at)


class DeltaError(ValueError):
    """A delta that does not fit the snapshot it claims to extend; `path` says where in the
    delta (`delta.clusters.at.b`), for the NACK."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def _apply_collection(old: list[Any], d: CollectionDelta, typ: type[Any], path: str,
                      where: str = "") -> list[Any]:
    """`old` with `d` applied; `path` is the collection's place in the delta (for errors).
    A delta `diff` never writes -- a name upserted twice, two additions at one position --
    is refused, not applied by "last one wins"."""
    items = {x.name: x for x in old}
    order = [x.name for x in old]
    what = f"{typ.__name__}{where}"
    for k, name in enumerate(d.remove):
        if name not in items:
            raise DeltaError(f"cannot remove unknown {what} {name!r}", f"{path}.remove[{k}]")
        del items[name]
        order.remove(name)
    added = []
    upserted: set[str] = set()
    for k, raw in enumerate(d.upsert):
        obj = msgspec.convert(raw, typ)
        if obj.name in upserted:
            raise DeltaError(f"{what} {obj.name!r} upserted twice", f"{path}.upsert[{k}]")
        upserted.add(obj.name)
        if obj.name not in items:
            added.append(obj.name)
            order.append(obj.name)
        items[obj.name] = obj
    if d.at:
        if sorted(d.at) != sorted(added):
            raise DeltaError(f"{what} positions do not name exactly the added ones",
                             f"{path}.at")
        order = [n for n in order if n not in d.at]
        taken: set[int] = set()
        for name, i in sorted(d.at.items(), key=lambda kv: kv[1]):
            if not 0 <= i <= len(order):
                raise DeltaError(f"{what} {name!r}: position {i} out of range",
                                 f"{path}.at.{name}")
            if i in taken:
                raise DeltaError(f"{what} {name!r}: two additions at position {i}",
                                 f"{path}.at.{name}")
            taken.add(i)
            order.insert(i, name)
    if d.order:
        if sorted(d.order) != sorted(items):
            raise DeltaError(f"{what} order does not list the same names", f"{path}.order")
        order = list(d.order)
    return [items[n] for n in order]


def _once(name: str, seen: set[str], what: str, path: str) -> None:
    """Two patches for one resource in a delta: refused (their order would decide)."""
    if name in seen:
        raise DeltaError(f"{what} {name!r} patched twice", path)
    seen.add(name)


def _patch_tables(tables: list[RouteTable], patches: list[VirtualHostsDelta]) -> list[RouteTable]:
    index = {t.name: i for i, t in enumerate(tables)}
    out = list(tables)
    seen: set[str] = set()
    for k, p in enumerate(patches):
        where = f"delta.virtual_hosts[{k}]"
        i = index.get(p.route_table)
        if i is None:
            raise DeltaError(f"virtual hosts for unknown RouteTable {p.route_table!r}",
                             f"{where}.route_table")
        _once(p.route_table, seen, "RouteTable", f"{where}.route_table")
        t = out[i]
        out[i] = msgspec.structs.replace(t, virtual_hosts=_apply_collection(
            t.virtual_hosts, p, VirtualHost, where, f" of RouteTable {t.name!r}"))
    return out


def _patch_clusters(clusters: list[Cluster], patches: list[EndpointsDelta]) -> list[Cluster]:
    index = {c.name: i for i, c in enumerate(clusters)}
    out = list(clusters)
    seen: set[str] = set()
    for k, p in enumerate(patches):
        where = f"delta.endpoints[{k}].cluster"
        i = index.get(p.cluster)
        if i is None:
            raise DeltaError(f"endpoints for unknown Cluster {p.cluster!r}", where)
        _once(p.cluster, seen, "Cluster", where)
        out[i] = msgspec.structs.replace(
            out[i], endpoints=msgspec.convert(p.endpoints, list[Endpoint]))
    return out


def apply_delta(base: ProxyConfig, d: Delta) -> ProxyConfig:
    """Rebuild the new snapshot; raises DeltaError or msgspec.ValidationError on a bad delta."""
    if d.base_version != base.version:
        raise DeltaError(f"delta is based on version {d.base_version!r}, "
                         f"proxy has {base.version!r}", "delta.base_version")
    tables = _apply_collection(base.route_tables, d.route_tables, RouteTable, "delta.route_tables")
    if d.virtual_hosts:
        tables = _patch_tables(tables, d.virtual_hosts)
    clusters = _apply_collection(base.clusters, d.clusters, Cluster, "delta.clusters")
    if d.endpoints:
        clusters = _patch_clusters(clusters, d.endpoints)
    return msgspec.structs.replace(
        base,
        version=d.version,
        node=base.node if d.node is None else msgspec.convert(d.node, Node),
        admin=base.admin if d.admin is None else msgspec.convert(d.admin, Admin),
        settings=base.settings if d.settings is None else msgspec.convert(d.settings, Settings),
        listeners=_apply_collection(base.listeners, d.listeners, Listener,
                                     "delta.listeners"),
        route_tables=tables,
        clusters=clusters,
        identities=_apply_collection(base.identities, d.identities, Identity,
                                      "delta.identities"),
        trust_bundles=_apply_collection(base.trust_bundles, d.trust_bundles, TrustBundle,
                                         "delta.trust_bundles"),
        dns=_apply_dns(base.dns, d),
        telemetry=(base.telemetry if d.telemetry is None
                   else msgspec.convert(d.telemetry, Telemetry)),
    )


def _apply_dns(base: DNS | None, d: Delta) -> DNS | None:
    if d.dns_removed:
        return None
    if d.dns is not None:
        return msgspec.convert(d.dns, DNS)
    if d.dns_hosts is None:
        return base
    if base is None:
        raise DeltaError("DNS hosts for a proxy with no dns section", "delta.dns_hosts")
    try:
        return msgspec.structs.replace(base, hosts=apply_hosts(base.hosts, d.dns_hosts))
    except DnsHostsError as exc:
        raise DeltaError(str(exc), exc.path) from exc
