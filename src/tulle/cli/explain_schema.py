"""`tulle explain KIND[.field.path]`: a resource kind's fields, from the same models that
validate it, with each field's type and documentation (like `kubectl explain`).

Docs are the attribute docstrings of the models in `tulle.api` (the string under a field), read
from the source with `ast`, so what `explain` says is what the code says.  Types are rendered
as kubectl does: `<string>`, `<integer>`, `<boolean>`, `<[]Type>`, `<map[string]string>`,
`<Object>` names, with `-required-` where the model requires the field.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import types
import typing
from typing import Any

import click
from pydantic import BaseModel


def _docstrings(cls: type) -> dict[str, str]:
    """Field name -> the string literal right after its annotated assignment, for `cls` and
    its bases (nearest first)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, BaseModel) or not issubclass(klass, BaseModel):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in itertools.pairwise(body):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) \
                    and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) \
                    and isinstance(b.value.value, str):
                out[a.target.id] = inspect.cleandoc(b.value.value)
    return out


def _strip(tp: Any) -> Any:
    """`X | None`, `Annotated[X, ...]` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_in(tp: Any) -> type[BaseModel] | None:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return _model_in(args[0]) if args else None
    if origin is dict:
        args = typing.get_args(tp)
        return _model_in(args[1]) if len(args) == 2 else None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def type_name(tp: Any) -> str:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return "[]" + (type_name(args[0]) if args else "Object")
    if origin is dict:
        args = typing.get_args(tp)
        return f"map[{type_name(args[0])}]{type_name(args[1])}" if len(args) == 2 else "map"
    if origin is typing.Literal:
        return "string" if all(isinstance(a, str) for a in typing.get_args(tp)) else "enum"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if isinstance(tp, type):
        if issubclass(tp, BaseModel):
            return tp.__name__
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
            tp, tp.__name__)
    return str(tp)


def explain_kind(path: str) -> str:
    """The text for `KIND[.field...]`; `click.UsageError` for an unknown kind or field."""
    from tulle.api.registry import resolve

    kind_name, *fields = path.split(".")
    try:
        info = resolve(kind_name)
    except KeyError as exc:
        raise click.UsageError(f"{kind_name!r}: {exc.args[0]} (`tulle api-resources` lists "
                               "them)") from None
    model: type[BaseModel] = info.model
    doc = inspect.cleandoc(model.__doc__ or "")
    field_line = ""
    walked: list[str] = []
    for f in fields:
        got = model.model_fields.get(f)
        if got is None:
            known = ", ".join(model.model_fields)
            raise click.UsageError(f"field {'.'.join([*walked, f])!r} does not exist in "
                                   f"{info.kind} (at {'.'.join(walked) or 'the top'}: {known})")
        walked.append(f)
        doc = _docstrings(model).get(f, "")
        field_line = f"FIELD:    {f} <{type_name(got.annotation)}>"
        inner = _model_in(got.annotation)
        if inner is None:
            if f != fields[-1]:
                raise click.UsageError(f"{'.'.join(walked)} has no fields (it is "
                                       f"<{type_name(got.annotation)}>)")
            model = None  # type: ignore[assignment]
            break
        model = inner
        if not doc:
            doc = inspect.cleandoc(inner.__doc__ or "")
    lines = [f"KIND:     {info.kind}", f"VERSION:  {info.api_version}", ""]
    if field_line:
        lines += [field_line, ""]
    lines += ["DESCRIPTION:"] + [f"    {line}" for line in (doc or "<empty>").splitlines()]
    if model is not None:
        docs = _docstrings(model)
        lines += ["", "FIELDS:"]
        for name, fi in model.model_fields.items():
            req = " -required-" if fi.is_required() else ""
            lines.append(f"  {name}\t<{type_name(fi.annotation)}>{req}")
            first = (docs.get(name) or "").split("\n\n")[0].replace("\n", " ")
            if first:
                lines += [f"    {w}" for w in textwrap.wrap(first, 90)]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["explain_kind", "type_name"]
