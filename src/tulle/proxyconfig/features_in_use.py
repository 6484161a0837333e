"""Which withheld features a config actually uses: the part of what was applied that an older
proxy does not run.

Why: a proxy lacking a feature is sent its snapshots without that feature's fields and items
(`features.withheld_from`), and its status lists what it lacks.  That list is the same whether
or not anything uses the feature, so during an upgrade every older proxy showed the same long
list, and nothing said that an AuthorizationPolicy's trust-domain check or a sticky route was
not in force at one of them (ADR 0122).  A feature is *in use* by a config when withholding it
takes something away: one of its fields holds a value other than its default, or one of the
items it drops is there.

Works on plain documents (`msgspec.to_builtins` of a `ProxyConfig`), as withholding does; the
defaults come from the model's own types, read once per path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import msgspec
from msgspec import inspect as mi

from tulle.proxyconfig.features import Feature
from tulle.proxyconfig.model import ProxyConfig

_NO_DEFAULT = object()
"""A field the model requires (no default): any value of it is a use."""


def _structs(t: mi.Type) -> list[mi.StructType]:
    """The struct types a value of `t` may be: itself, a list's items, a union's members."""
    if isinstance(t, mi.StructType):
        return [t]
    if isinstance(t, mi.ListType):
        return _structs(t.item_type)
    if isinstance(t, mi.UnionType):
        return [s for m in t.types for s in _structs(m)]
    return []


@cache
def default_at(path: str) -> Any:
    """The plain value of the field at schema path `path` (`listeners[].sources`) when it is
    not set; `_NO_DEFAULT` for a required field.  In a union of structs (a filter entry), the
    first member with the field gives it."""
    types = _structs(mi.type_info(ProxyConfig))
    field: mi.Field | None = None
    for seg in path.split("."):
        name = seg.removesuffix("[]")
        found = [f for t in types for f in t.fields if f.encode_name == name]
        if not found:
            raise KeyError(f"{path}: no field {name!r}")
        field = found[0]
        types = [s for f in found for s in _structs(f.type)]
    assert field is not None
    if field.default is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default_factory())
    return _NO_DEFAULT


def _values(node: Any, segments: list[str]) -> Iterator[Any]:
    """The values at `segments` below `node` (each item of a `[]` segment's list)."""
    if not isinstance(node, dict):
        return
    head, rest = segments[0], segments[1:]
    child = node.get(head.removesuffix("[]"), _NO_DEFAULT)
    if child is _NO_DEFAULT:
        return
    if not rest:
        yield child
        return
    for item in (child if head.endswith("[]") and isinstance(child, list) else [child]):
        yield from _values(item, rest)


def _items(node: Any, segments: list[str]) -> Iterator[Any]:
    """The items of the list at `segments` (a `drops` path, its last segment a list)."""
    for value in _values(node, segments):
        if isinstance(value, list):
            yield from value


def _item_paths(feature: Feature) -> tuple[str, ...]:
    """The lists whose items `feature.uses` judges: what it drops, or what a proxy lacking
    it refuses (`refused_at`)."""
    if feature.uses is None:
        return ()
    return ((feature.drops,) if feature.drops else ()) + feature.refused_at


def uses(doc: dict[str, Any], feature: Feature) -> bool:
    """Whether withholding `feature` from `doc` (a plain `ProxyConfig`) takes anything away;
    for a feature never withheld (`refused_at`), whether a proxy lacking it refuses `doc`."""
    return any(True for _ in _uses(doc, feature))


def _uses(doc: dict[str, Any], feature: Feature) -> Iterator[str]:
    check = feature.uses
    for items in _item_paths(feature):
        for item in _items(doc, items.split(".")):
            if isinstance(item, dict) and check is not None and check(item):
                yield f"{items}={msgspec.json.encode(item, order='sorted').decode()}"
    for path in feature.paths:
        default = default_at(path)
        for v in _values(doc, path.split(".")):
            if v != default:
                yield f"{path}={msgspec.json.encode(v, order='sorted').decode()}"


def uses_of(doc: dict[str, Any], feature: Feature) -> Counter[str]:
    """What of `doc` needs `feature`, each use once per occurrence: an item it drops (or
    whose presence a proxy lacking it refuses), or a field's value away from its default,
    as `path=value`.  Two configs whose counts differ differ in what needs the feature: how
    apply tells what *it* adds that an older proxy will not run (ADR 0125)."""
    return Counter(_uses(doc, feature))


def in_use(doc: dict[str, Any], missing: Iterable[Feature]) -> tuple[Feature, ...]:
    """The features of `missing` that `doc` uses: what of it a proxy lacking them does not
    run."""
    return tuple(f for f in missing if uses(doc, f))


__all__ = ["default_at", "in_use", "uses", "uses_of"]
