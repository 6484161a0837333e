"""`delta-telemetry-peers`: a `telemetry` section whose only change is its `metrics.peers`,
sent as the identities added, changed and removed (ADR 0053), not the whole table.

Every proxy's golden metrics carry the mesh's identity -> workload table; a workload added to
the mesh changes it for every proxy.  Sent whole that is O(workloads) bytes to each proxy per
change; as a unit, one entry.  Entries are keyed by `principal`; the new order is kept exactly
(`apply_delta(a, diff(a, b)) == b`): additions go after the survivors, and when that is not the
new order the whole key order is sent.  A proxy that lacks the unit gets the section whole
(`Delta.telemetry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

from tulle.proxyconfig.telemetry import PeerWorkload, Telemetry

if TYPE_CHECKING:
    from tulle.proxyconfig.model import ProxyConfig

TELEMETRY_PEERS: Final = "delta-telemetry-peers"


class PeersDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    upsert: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Entries (plain values) that are new or changed."""
    remove: list[str] = msgspec.field(default_factory=list)
    """Principals of the entries that are gone."""
    order: list[str] = msgspec.field(default_factory=list)
    """Every principal in the new order, only when survivors-then-additions is not it."""


class PeersDeltaError(ValueError):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def only_peers_changed(old: Telemetry, new: Telemetry) -> bool:
    """Both have `metrics`, equal but for `peers`."""
    a, b = old.metrics, new.metrics
    if a is None or b is None or a.peers == b.peers:
        return False
    return msgspec.structs.replace(a, peers=[]) == msgspec.structs.replace(b, peers=[]) and \
        msgspec.structs.replace(old, metrics=None) == msgspec.structs.replace(new, metrics=None)


def diff_peers(old: list[PeerWorkload], new: list[PeerWorkload]) -> PeersDelta:
    old_by = {p.principal: p for p in old}
    new_keys = [p.principal for p in new]
    wanted = set(new_keys)
    upsert = [msgspec.to_builtins(p) for p in new
              if old_by.get(p.principal) is not p and old_by.get(p.principal) != p]
    remove = [k for k in old_by if k not in wanted]
    survivors = [k for k in old_by if k in wanted]
    added = [k for k in new_keys if k not in old_by]
    order = [] if survivors + added == new_keys else new_keys
    return PeersDelta(upsert=upsert, remove=remove, order=order)


def apply_peers(base: Telemetry, d: PeersDelta, path: str = "delta.telemetry_peers") -> Telemetry:
    """`base` with `d` applied to its `metrics.peers`; a delta `diff_peers` never writes is
    refused with its path."""
    metrics = base.metrics
    if metrics is None:
        raise PeersDeltaError("peers for a proxy with no telemetry.metrics", path)
    items = {p.principal: p for p in metrics.peers}
    order = list(items)
    for i, k in enumerate(d.remove):
        if k not in items:
            raise PeersDeltaError(f"cannot remove unknown peer {k!r}", f"{path}.remove[{i}]")
        del items[k]
        order.remove(k)
    seen: set[str] = set()
    for i, raw in enumerate(d.upsert):
        p = msgspec.convert(raw, PeerWorkload)
        if p.principal in seen:
            raise PeersDeltaError(f"peer {p.principal!r} upserted twice", f"{path}.upsert[{i}]")
        seen.add(p.principal)
        if p.principal not in items:
            order.append(p.principal)
        items[p.principal] = p
    if d.order:
        if sorted(d.order) != sorted(items):
            raise PeersDeltaError("order does not list the same peers", f"{path}.order")
        order = list(d.order)
    if len(order) > 100_000:
        raise PeersDeltaError("more than 100000 peers", path)
    peers = [items[k] for k in order]
    return msgspec.structs.replace(base, metrics=msgspec.structs.replace(metrics, peers=peers))


def telemetry_fields(old: ProxyConfig, new: ProxyConfig, units: frozenset[str]) -> dict[str, Any]:
    """The `Delta` fields for the `telemetry` section (`diff` and the push's frames share
    them): nothing, the section whole, or its peers as a unit."""
    if old.telemetry is new.telemetry or old.telemetry == new.telemetry:
        return {}
    if TELEMETRY_PEERS in units and only_peers_changed(old.telemetry, new.telemetry):
        assert old.telemetry.metrics is not None and new.telemetry.metrics is not None
        return {"telemetry_peers": diff_peers(old.telemetry.metrics.peers,
                                              new.telemetry.metrics.peers)}
    return {"telemetry": msgspec.to_builtins(new.telemetry)}
