"""Frames for many proxies at once: each resource encoded once, each delta found by identity.

With 1,000 Services every snapshot holds ~1,000 clusters and a route table of ~1,000 virtual
hosts, and all 2,000 proxies hold the *same* objects: the compiler shares the outbound part by
reference within a compilation and, through its `PartCache`, across compilations for whatever
did not change.  Encoding or diffing each snapshot from scratch would redo the same work 2,000
times (seconds of CPU per change).  Instead:

* a resource's JSON is encoded once and spliced into every frame that carries it
  (`msgspec.Raw`), so a full snapshot costs about a memory copy; a big one (the outbound route
  table: ~400 KB at 1,000 Services) is not even copied: a frame is a list of pieces, and the
  same bytes object goes to every proxy's transport (`writelines`);
* a delta first compares the two snapshots' collections by object identity (`map(id, ...)`,
  set difference: loops in C), and only the few objects that are new go through the
  name lookup and an equality check, which is itself memoised per pair of objects;
* so is the finer unit of a changed resource (ADR 0018): whether a route table changed only
  in its virtual hosts (and which), or a cluster only in its endpoints, is worked out once per
  pair of objects, not once per proxy.

The frames are byte-for-byte what `encode(snapshot_message(...))` and
`encode(delta_message(diff(...)))` give (a unit test holds them to it), so the proxy's side
does not know this module exists.

A proxy that lacks a config feature (`proxyconfig/features.py`) gets frames of its own, built
by `withheld_snapshot_frame` / `withheld_delta_frame` from plain values with the feature's
fields removed: slower, but only older proxies pay it, during an upgrade.

Entries live for two compilation rounds (`rotate()` at each): long enough for sessions to
push the round they were woken for, short enough that memory holds about one snapshot's worth
of JSON whatever the number of proxies.
"""

from __future__ import annotations

import operator
from itertools import compress, filterfalse
from typing import Any, cast

import msgspec

from tulle.proxyconfig.delta import (
    ENDPOINTS,
    POSITIONS,
    UNITS,
    VIRTUAL_HOSTS,
    CollectionDelta,
    Delta,
    EndpointsDelta,
    VirtualHostsDelta,
    changed_only_in,
    diff,
    dns_fields,
    placement,
    telemetry_field,
    virtual_hosts_delta,
)
from tulle.proxyconfig.features import Feature, withhold_config, withhold_delta
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import DeltaMsg, Message, Snapshot

_name = operator.attrgetter("name")
_encoder = msgspec.json.Encoder()
_EMPTY = CollectionDelta()
_HOLE = msgspec.Raw(b"\x00")
"""Stands for a big resource while a frame is encoded.  msgspec escapes control characters in
strings, so a raw NUL byte in its output can only be one of these."""
BIG = 16 * 1024
"""Resources whose JSON is at least this long are written as pieces of their own."""

Frame = list[bytes]
"""One length-prefixed message as pieces to `writelines`; `b"".join(frame)` is the frame."""


class WireCache:
    """Encoded resources and equality verdicts, keyed by object identity (the objects are kept
    alive by the entry, so an id is never reused while its entry exists)."""

    def __init__(self, big: int = BIG) -> None:
        self.big = big
        self._raw: dict[int, tuple[object, msgspec.Raw, bytes]] = {}
        self._raw_prev: dict[int, tuple[object, msgspec.Raw, bytes]] = {}
        self._eq: dict[tuple[int, int], tuple[object, object, bool]] = {}
        self._eq_prev: dict[tuple[int, int], tuple[object, object, bool]] = {}
        self._unit: dict[tuple[int, int, str], tuple[object, object, object]] = {}
        self._unit_prev: dict[tuple[int, int, str], tuple[object, object, object]] = {}

    def rotate(self) -> None:
        """A new compilation round: forget what was not used since the previous one."""
        self._raw_prev, self._raw = self._raw, {}
        self._eq_prev, self._eq = self._eq, {}
        self._unit_prev, self._unit = self._unit, {}

    def raw(self, obj: object) -> msgspec.Raw:
        return self._entry(obj)[1]

    def _entry(self, obj: object) -> tuple[object, msgspec.Raw, bytes]:
        k = id(obj)
        hit = self._raw.get(k)
        if hit is None or hit[0] is not obj:
            hit = self._raw_prev.get(k)
            if hit is None or hit[0] is not obj:
                data = _encoder.encode(obj)
                hit = (obj, msgspec.Raw(data), data)
            self._raw[k] = hit
        return hit

    def _piece(self, obj: object, holes: list[bytes]) -> msgspec.Raw:
        _, raw, data = self._entry(obj)
        if len(data) >= self.big:
            holes.append(data)
            return _HOLE
        return raw

    def same(self, a: object, b: object) -> bool:
        k = (id(a), id(b))
        hit = self._eq.get(k)
        if hit is None or hit[0] is not a or hit[1] is not b:
            hit = self._eq_prev.get(k)
            if hit is None or hit[0] is not a or hit[1] is not b:
                hit = (a, b, a == b)
            self._eq[k] = hit
        return hit[2]

    def unit(self, a: Any, b: Any, kind: str) -> Any:
        """The finer delta unit that turns `a` into `b` (same name, both changed), or None
        when `b` differs in more than that unit: a `VirtualHostsDelta` for kind
        `virtual_hosts` / `virtual_hosts+at` (with positions), an `EndpointsDelta` for
        `endpoints`."""
        k = (id(a), id(b), kind)
        hit = self._unit.get(k)
        if hit is None or hit[0] is not a or hit[1] is not b:
            hit = self._unit_prev.get(k)
            if hit is None or hit[0] is not a or hit[1] is not b:
                hit = (a, b, self._make_unit(a, b, kind))
            self._unit[k] = hit
        return hit[2]

    @staticmethod
    def _make_unit(a: Any, b: Any, kind: str) -> object:
        if kind == ENDPOINTS:
            if not changed_only_in(a, b, "endpoints"):
                return None
            return EndpointsDelta(cluster=b.name, endpoints=msgspec.to_builtins(b.endpoints))
        if not changed_only_in(a, b, "virtual_hosts"):
            return None
        return virtual_hosts_delta(a, b, kind.endswith("+at"))

    # -- frames ----------------------------------------------------------------------------------

    def snapshot_frame(self, cfg: ProxyConfig) -> Frame:
        """`encode(snapshot_message(cfg))`, sharing each resource's JSON."""
        holes: list[bytes] = []

        def pieces(items: list[Any]) -> Any:
            return [self._piece(x, holes) for x in items]

        # Field order: the holes are filled in the order the encoder meets them.
        wire = msgspec.structs.replace(cfg, listeners=pieces(cfg.listeners),
                                       route_tables=pieces(cfg.route_tables),
                                       clusters=pieces(cfg.clusters))
        return _frame(Snapshot(version=cfg.version, config=msgspec.Raw(_encoder.encode(wire))),
                      holes)

    def delta_frame(self, old: ProxyConfig, new: ProxyConfig,
                    units: frozenset[str] = UNITS) -> Frame:
        """`encode(DeltaMsg(delta=diff(old, new, units)))`, without walking unchanged
        resources."""
        holes: list[bytes] = []
        positions = POSITIONS in units
        vkind = (VIRTUAL_HOSTS + "+at" if positions else VIRTUAL_HOSTS
                 ) if VIRTUAL_HOSTS in units else ""
        tables, vhosts = self._collection(old.route_tables, new.route_tables, holes, positions,
                                          vkind)
        clusters, eps = self._collection(old.clusters, new.clusters, holes, positions,
                                         ENDPOINTS if ENDPOINTS in units else "")
        d = Delta(
            version=new.version,
            base_version=old.version,
            node=None if old.node == new.node else msgspec.to_builtins(new.node),
            admin=None if old.admin == new.admin else msgspec.to_builtins(new.admin),
            settings=None if old.settings == new.settings else msgspec.to_builtins(new.settings),
            listeners=self._collection(old.listeners, new.listeners, holes, positions)[0],
            route_tables=tables,
            clusters=clusters,
            virtual_hosts=cast(list[VirtualHostsDelta], vhosts),
            endpoints=cast(list[EndpointsDelta], eps),
            identities=self._collection(old.identities, new.identities, holes, positions)[0],
            trust_bundles=self._collection(old.trust_bundles, new.trust_bundles, holes,
                                           positions)[0],
            **dns_fields(old, new, units),
            telemetry=telemetry_field(old, new),
        )
        return _frame(DeltaMsg(delta=msgspec.Raw(_encoder.encode(d))), holes)

    def _collection(self, old: list[Any], new: list[Any], holes: list[bytes],
                    positions: bool, kind: str = "") -> tuple[CollectionDelta, list[Any]]:
        """Same result as `proxyconfig.delta.diff` for collections whose names are unique
        (which validation guarantees): the collection's delta and, with a unit `kind`, the
        finer units of the changed resources that have one."""
        units: list[Any] = []
        upsert: list[Any] = []  # Raw JSON where the type says plain values: same bytes
        if old is new:
            return _EMPTY, units

        def changed(o: Any, x: Any) -> None:
            u = self.unit(o, x, kind) if kind else None
            if u is not None:
                units.append(u)
            else:
                upsert.append(self._piece(x, holes))

        if len(old) == len(new):
            # The common case: some objects replaced in place.  `is_not` over both lists runs in
            # C; only the replaced positions are looked at in Python.
            replaced = list(compress(range(len(new)), map(operator.is_not, old, new)))
            if not replaced:
                return _EMPTY, units  # the very same objects in the same order
            if all(old[i].name == new[i].name for i in replaced):
                for i in replaced:
                    if not self.same(old[i], new[i]):
                        changed(old[i], new[i])
                if not upsert:
                    return _EMPTY, units
                return CollectionDelta(upsert=cast(Any, upsert)), units
        old_ids, new_ids = list(map(id, old)), list(map(id, new))
        fresh = set(new_ids).difference(old_ids)
        old_names, new_names = list(map(_name, old)), list(map(_name, new))
        old_by = dict(zip(old_names, old, strict=True))
        if fresh:
            at = dict(zip(new_ids, range(len(new_ids)), strict=True))
            for i in sorted(at[k] for k in fresh):
                x = new[i]
                o = old_by.get(x.name)
                if o is None:
                    upsert.append(self._piece(x, holes))
                elif not self.same(o, x):
                    changed(o, x)
        wanted = set(new_names)
        remove = list(filterfalse(wanted.__contains__, old_names))
        order, where = placement(old_names, new_names, positions)
        if not upsert and not remove and not order and not where:
            return _EMPTY, units
        return CollectionDelta(upsert=upsert, remove=remove, order=order, at=where), units


def _frame(msg: Message, holes: list[bytes]) -> Frame:
    body = _encoder.encode(msg)
    if not holes:
        return [len(body).to_bytes(4, "big"), body]
    segments = body.split(b"\x00")
    assert len(segments) == len(holes) + 1, "a placeholder went missing"
    size = len(body) - len(holes) + sum(map(len, holes))
    out = [size.to_bytes(4, "big"), segments[0]]
    for hole, seg in zip(holes, segments[1:], strict=True):
        out += (hole, seg)
    return out


def withheld_snapshot_frame(cfg: ProxyConfig, missing: tuple[Feature, ...]) -> Frame:
    """A snapshot for a proxy lacking `missing`: their fields are not in it at all."""
    doc = msgspec.to_builtins(cfg)
    withhold_config(doc, missing)
    return _frame(Snapshot(version=cfg.version, config=msgspec.Raw(_encoder.encode(doc))), [])


def withheld_delta_frame(old: ProxyConfig, new: ProxyConfig, missing: tuple[Feature, ...],
                         units: frozenset[str] = UNITS) -> Frame:
    """A delta for a proxy lacking `missing` (see `withheld_snapshot_frame`), in the delta
    `units` it takes."""
    doc = msgspec.to_builtins(diff(old, new, units))
    withhold_delta(doc, missing)
    return _frame(DeltaMsg(delta=msgspec.Raw(_encoder.encode(doc))), [])
