"""Deltas between two snapshots: what the push stream sends after the first full snapshot.

A snapshot's named collections (listeners, route tables, clusters) are diffed by name; the
singletons (node, admin, settings) are sent whole when they changed.  `apply_delta(base, d)`
rebuilds the exact new snapshot, so `apply_delta(a, diff(a, b)) == b` for any a and b — the
property the tests check with hypothesis-generated snapshots.  The result still goes through
validation on the proxy (a delta can be well-formed yet produce an invalid snapshot, which the
proxy NACKs).

Order within a collection is kept as in the new snapshot (listener order matters to nobody
today, but deterministic output keeps golden files and diffs stable).
"""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.proxyconfig.model import (
    Admin,
    Cluster,
    Identity,
    Listener,
    Node,
    ProxyConfig,
    RouteTable,
    Settings,
    TrustBundle,
)

COLLECTIONS = ("listeners", "route_tables", "clusters", "identities", "trust_bundles")


class CollectionDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    upsert: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Full resources (as plain values) that are new or changed."""
    remove: list[str] = msgspec.field(default_factory=list)
    order: list[str] = msgspec.field(default_factory=list)
    """Names in the new snapshot's order (only when it changed)."""


class Delta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    version: str
    base_version: str
    node: dict[str, Any] | None = None
    admin: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    listeners: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    route_tables: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    clusters: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    identities: CollectionDelta = msgspec.field(default_factory=CollectionDelta)
    trust_bundles: CollectionDelta = msgspec.field(default_factory=CollectionDelta)

    @property
    def empty(self) -> bool:
        return (self.node is None and self.admin is None and self.settings is None
                and all(not getattr(self, c).upsert and not getattr(self, c).remove
                        and not getattr(self, c).order for c in COLLECTIONS))


def _diff_collection(old: list[Any], new: list[Any]) -> CollectionDelta:
    old_by = {x.name: x for x in old}
    new_names = [x.name for x in new]
    wanted = set(new_names)
    # Snapshots of one compilation share unchanged resources by reference: `is` settles most
    # comparisons without walking the structs.
    upsert = []
    for x in new:
        o = old_by.get(x.name)
        if o is not x and o != x:
            upsert.append(msgspec.to_builtins(x))
    remove = [n for n in old_by if n not in wanted]
    # What apply_delta produces without an explicit order: survivors, then additions.
    predicted = [x.name for x in old if x.name in wanted] + [
        n for n in new_names if n not in old_by]
    order = new_names if predicted != new_names else []
    return CollectionDelta(upsert=upsert, remove=remove, order=order)


def diff(old: ProxyConfig, new: ProxyConfig) -> Delta:
    """The delta that turns `old` into `new`."""
    return Delta(
        version=new.version,
        base_version=old.version,
        node=None if old.node == new.node else msgspec.to_builtins(new.node),
        admin=None if old.admin == new.admin else msgspec.to_builtins(new.admin),
        settings=None if old.settings == new.settings else msgspec.to_builtins(new.settings),
        listeners=_diff_collection(old.listeners, new.listeners),
        route_tables=_diff_collection(old.route_tables, new.route_tables),
        clusters=_diff_collection(old.clusters, new.clusters),
        identities=_diff_collection(old.identities, new.identities),
        trust_bundles=_diff_collection(old.trust_bundles, new.trust_bundles),
    )


class DeltaError(ValueError):
    """A delta that does not fit the snapshot it claims to extend."""


def _apply_collection(old: list[Any], d: CollectionDelta, typ: type[Any]) -> list[Any]:
    items = {x.name: x for x in old}
    order = [x.name for x in old]
    for name in d.remove:
        if name not in items:
            raise DeltaError(f"cannot remove unknown {typ.__name__} {name!r}")
        del items[name]
        order.remove(name)
    for raw in d.upsert:
        obj = msgspec.convert(raw, typ)
        if obj.name not in items:
            order.append(obj.name)
        items[obj.name] = obj
    if d.order:
        if sorted(d.order) != sorted(items):
            raise DeltaError(f"{typ.__name__} order does not list the same names")
        order = list(d.order)
    return [items[n] for n in order]


def apply_delta(base: ProxyConfig, d: Delta) -> ProxyConfig:
    """Rebuild the new snapshot; raises DeltaError or msgspec.ValidationError on a bad delta."""
    if d.base_version != base.version:
        raise DeltaError(f"delta is based on version {d.base_version!r}, "
                         f"proxy has {base.version!r}")
    return msgspec.structs.replace(
        base,
        version=d.version,
        node=base.node if d.node is None else msgspec.convert(d.node, Node),
        admin=base.admin if d.admin is None else msgspec.convert(d.admin, Admin),
        settings=base.settings if d.settings is None else msgspec.convert(d.settings, Settings),
        listeners=_apply_collection(base.listeners, d.listeners, Listener),
        route_tables=_apply_collection(base.route_tables, d.route_tables, RouteTable),
        clusters=_apply_collection(base.clusters, d.clusters, Cluster),
        identities=_apply_collection(base.identities, d.identities, Identity),
        trust_bundles=_apply_collection(base.trust_bundles, d.trust_bundles, TrustBundle),
    )
