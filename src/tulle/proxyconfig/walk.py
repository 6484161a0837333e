"""The structural half of validation: walk a raw document against the contract's types.

msgspec stops at the first error; this walk reports every one (structure, types, bounds,
unknown fields) with its field path, and drops the unknown fields a sender marked optional.
Kept apart from `validate.py`, which adds the semantic checks and builds the config, because
the push stream (`stream.py`) also reads its messages with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

from msgspec import inspect as mi

from tulle.errors import FieldError
from tulle.proxyconfig.model import ProxyConfig


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_TYPE_NAMES = {
    mi.IntType: "an integer",
    mi.StrType: "a string",
    mi.BoolType: "a boolean",
    mi.FloatType: "a number",
    mi.ListType: "a list",
    mi.DictType: "a mapping",
    mi.StructType: "a mapping",
    mi.NoneType: "null",
}


def _check_tagged(value: dict[str, Any], options: list[mi.StructType], path: str,
                  out: list[FieldError], w: _Walk) -> None:
    """A tagged union: the tag names the struct, whose errors are reported with their paths."""
    field = options[0].tag_field
    assert field is not None
    tags = {o.tag: o for o in options}
    allowed = ", ".join(repr(k) for k in tags)
    if field not in value:
        out.append(FieldError(_join(path, field), f"required field is missing (one of {allowed})"))
        return
    option = tags.get(value[field])
    if option is None:
        out.append(FieldError(_join(path, field), f"must be one of {allowed}, "
                                                  f"got {value[field]!r}"))
        return
    _check(value, option, path, out, w)


def _describe(t: mi.Type) -> str:
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in t.values)
    if isinstance(t, mi.StructType) and t.tag_field:
        return f"a mapping with {t.tag_field}: {t.tag!r}"
    return _TYPE_NAMES.get(type(t), type(t).__name__)


class _Walk:
    """What one walk carries besides the errors: the schema paths whose unknown fields may be
    dropped (marked optional by the sender) and the concrete paths that were dropped."""

    __slots__ = ("ignored", "optional")

    def __init__(self, optional: Collection[str] = ()) -> None:
        self.optional = frozenset(optional)
        self.ignored: list[str] = []


_INDEX = re.compile(r"\[[^\]]*\]")


def schema_path(path: str) -> str:
    """`listeners[3].port` and `listeners[name=web].port` -> `listeners[].port`: the form
    feature and optional-field paths are written in."""
    return _INDEX.sub("[]", path)


def _tagged(t: mi.UnionType) -> list[mi.StructType] | None:
    """The options of a tagged union of structs (msgspec's `tag_field`), else None."""
    real = [o for o in t.types if not isinstance(o, mi.NoneType)]
    if len(real) < 2 or not all(isinstance(o, mi.StructType) and o.tag_field for o in real):
        return None
    return real  # type: ignore[return-value]



def _bounds(t: mi.IntType | mi.FloatType, value: float, path: str,
            out: list[FieldError]) -> None:
    """The `ge` / `le` bounds of a number field (integers and floats alike)."""
    if t.ge is not None and value < t.ge:
        out.append(FieldError(path, f"must be >= {t.ge}, got {value}"))
    if t.le is not None and value > t.le:
        out.append(FieldError(path, f"must be <= {t.le}, got {value}"))

def _check(value: Any, t: mi.Type, path: str, out: list[FieldError], w: _Walk) -> None:
    if isinstance(t, mi.AnyType):
        return
    if isinstance(t, mi.UnionType):
        tagged = _tagged(t)
        if tagged is not None and isinstance(value, dict):
            _check_tagged(value, tagged, path, out, w)  # the tag decides; no guessing
            return
        for option in t.types:
            trial: list[FieldError] = []
            tw = _Walk(w.optional)
            _check(value, option, path, trial, tw)
            if not trial:
                w.ignored += tw.ignored
                return
        # Prefer the errors of the non-null option so the message is about the real shape.
        real = [o for o in t.types if not isinstance(o, mi.NoneType)]
        if len(real) == 1:
            _check(value, real[0], path, out, w)
        else:
            out.append(FieldError(path, "expected " + " or ".join(_describe(o) for o in t.types)))
        return
    if isinstance(t, mi.NoneType):
        if value is not None:
            out.append(FieldError(path, "expected null"))
        return
    if isinstance(t, mi.LiteralType):
        if value not in t.values:
            allowed = ", ".join(repr(v) for v in t.values)
            out.append(FieldError(path, f"must be one of {allowed}, got {value!r}"))
        return
    if isinstance(t, mi.BoolType):
        if not isinstance(value, bool):
            out.append(FieldError(path, f"expected a boolean, got {type(value).__name__}"))
        return
    if isinstance(t, mi.IntType):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(FieldError(path, f"expected an integer, got {type(value).__name__}"))
            return
        _bounds(t, value, path, out)
        return
    if isinstance(t, mi.FloatType):  # (`telemetry.tracing.sampling_percent`)
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(FieldError(path, f"expected a number, got {type(value).__name__}"))
            return
        if not math.isfinite(value):
            out.append(FieldError(path, "must be a finite number"))
            return
        _bounds(t, value, path, out)
        return
    if isinstance(t, mi.StrType):
        if not isinstance(value, str):
            out.append(FieldError(path, f"expected a string, got {type(value).__name__}"))
            return
        if t.min_length is not None and len(value) < t.min_length:
            out.append(FieldError(path, f"must be at least {t.min_length} characters"))
        if t.max_length is not None and len(value) > t.max_length:
            out.append(FieldError(path, f"must be at most {t.max_length} characters"))
        if t.pattern is not None and not re.search(t.pattern, value):
            out.append(FieldError(path, f"must match {t.pattern}, got {value!r}"))
        return
    if isinstance(t, mi.ListType):
        if not isinstance(value, list):
            out.append(FieldError(path, f"expected a list, got {type(value).__name__}"))
            return
        if t.max_length is not None and len(value) > t.max_length:
            out.append(FieldError(path, f"must have at most {t.max_length} items"))
        for i, item in enumerate(value):
            _check(item, t.item_type, _join(path, i), out, w)
        return
    if isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            out.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
            return
        for k, v in value.items():
            _check(v, t.value_type, _join(path, str(k)), out, w)
        return
    if isinstance(t, mi.StructType):
        if not isinstance(value, dict):
            out.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
            return
        if t.tag_field and t.tag_field in value and value[t.tag_field] != t.tag:
            out.append(FieldError(_join(path, t.tag_field), f"must be {t.tag!r}"))
        known = {f.encode_name: f for f in t.fields}
        unknown = [k for k in value if k not in known and k != t.tag_field]
        if unknown and t.forbid_unknown_fields:
            for key in unknown:
                where = _join(path, str(key))
                if w.optional and schema_path(where) in w.optional:
                    del value[key]  # the sender said an older proxy may go without it
                    w.ignored.append(where)
                else:
                    out.append(FieldError(where, "unknown field"))
        for f in t.fields:
            if f.encode_name in value:
                _check(value[f.encode_name], f.type, _join(path, f.encode_name), out, w)
            elif f.required:
                out.append(FieldError(_join(path, f.encode_name), "required field is missing"))
        return
    out.append(FieldError(path, f"unsupported type {type(t).__name__}"))  # pragma: no cover


_SCHEMA: mi.Type = mi.type_info(ProxyConfig)


def errors_in(raw: Any, typ: Any, path: str = "", *, optional: Collection[str] = (),
              ignored: list[str] | None = None) -> list[FieldError]:
    """The structural errors of `raw` read as `typ` (any msgspec type of the contract), each
    with its path below `path`.  Unknown fields at a schema path in `optional` are removed
    from `raw` (it is changed in place) and their paths appended to `ignored`."""
    w = _Walk(optional)
    errors: list[FieldError] = []
    _check(raw, _SCHEMA if typ is ProxyConfig else mi.type_info(typ), path, errors, w)
    if ignored is not None:
        ignored.extend(w.ignored)
    return errors
