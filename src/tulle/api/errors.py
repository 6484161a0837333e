"""User-facing validation errors: every problem in a resource, each with its field path.

pydantic reports errors with a `loc` tuple that includes its own internals (union members,
validator function names, `[key]` markers).  Operators see paths in the form they write YAML:
`spec.rules[0].matches[1].path.value: must start with "/"`.  This module owns that translation,
so models raise plain reasons and nothing else in the project parses pydantic errors.

Cross-field rules live in model validators, which pydantic locates at the model itself.  Such a
rule names the exact field it is about with `field_error(("value",), "...")`; the sub-path rides
in the error context and is appended here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic
from pydantic_core import PydanticCustomError

from tulle.errors import FieldError

PathSegment = str | int

_SUBPATH = "tulle_subpath"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# pydantic's own loc segments: validator wrappers, union members and markers, never field names.
_INTERNAL = re.compile(
    r"^(?:function-(?:after|before|wrap|plain)|union|tagged-union|nullable|chain|lax-or-strict"
    r"|json-or-python|constrained-[a-z-]+|list|dict|literal|model|definition-ref)\[.*\]$"
    r"|^\[key\]$|^(?:int|str|float|bool|none|json|python|lax|strict)$"
)


class ValidationError(ValueError):
    """A resource was refused; `errors` lists every reason found, each with its field path."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def pairs(self) -> list[tuple[str, str]]:
        """The errors as `(path, message)` pairs."""
        return [(e.path, e.message) for e in self.errors]


def field_error(subpath: Sequence[PathSegment], message: str) -> PydanticCustomError:
    """An error for a model validator to raise about one of its own (nested) fields."""
    return PydanticCustomError("tulle_field", "{reason}", {"reason": message, _SUBPATH: tuple(subpath)})


def render_path(segments: Iterable[PathSegment]) -> str:
    """`("spec", "rules", 0, "name")` -> `spec.rules[0].name`; odd keys as `labels["a/b"]`."""
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _IDENT.match(seg):
            out += f".{seg}" if out else seg
        else:
            out += f"[{json.dumps(seg)}]"
    return out


def quote(value: Any) -> str:
    """A user value as it appears in a message: JSON-ish, strings in double quotes."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind == "tulle_field":
        return str(ctx["reason"])
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {expected}, got {quote(got)}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items, got {ctx.get('actual_length')}"
    if kind == "string_too_short":
        n = ctx.get("min_length")
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters, got {len(str(got))}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {quote(got)}"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "less_than_equal": ("<=", "le"),
        "greater_than": (">", "gt"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx.get(key)}, got {quote(got)}"
    types = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "string_type": "a string",
        "bool_type": "a boolean",
        "bool_parsing": "a boolean",
        "float_type": "a number",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "datetime_type": "an RFC 3339 timestamp",
        "datetime_parsing": "an RFC 3339 timestamp",
        "datetime_from_date_parsing": "an RFC 3339 timestamp",
    }
    if kind in types:
        return f"must be {types[kind]}, got {quote(got)}"
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


def _path(err: Any, prefix: Sequence[PathSegment]) -> str:
    loc: list[PathSegment] = list(prefix)
    for seg in err["loc"]:
        if isinstance(seg, str) and _INTERNAL.match(seg):
            continue
        loc.append(seg)
    ctx = err.get("ctx") or {}
    loc.extend(ctx.get(_SUBPATH, ()))
    return render_path(loc)


MAX_ERRORS = 100
"""Errors reported for one document; the rest are counted in one more line.  A map of a
million wrongly typed values made a million errors: a minute of the control plane's event
loop, 1.7 GB and an 82 MB answer (ADR 0102).  Nobody reads past the first hundred."""


def from_pydantic(exc: pydantic.ValidationError, prefix: Sequence[PathSegment] = ()) -> list[FieldError]:
    """The errors of a pydantic `ValidationError` as `FieldError`s, duplicates removed, at
    most `MAX_ERRORS` of them and then one saying how many more there are."""
    out: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    total = exc.error_count()
    for err in exc.errors(include_url=False):
        fe = FieldError(_path(err, prefix), _message(err))
        if (fe.path, fe.message) not in seen:
            seen.add((fe.path, fe.message))
            out.append(fe)
            if len(out) == MAX_ERRORS and total > MAX_ERRORS:
                out.append(FieldError("", f"and up to {total - MAX_ERRORS} more errors, not "
                                          "shown"))
                break
    return out


__all__ = ["FieldError", "PathSegment", "ValidationError", "field_error", "from_pydantic",
           "quote", "render_path"]
