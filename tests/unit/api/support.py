"""Helpers for the resource API tests: build documents and collect (path, message) errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tulle.api import ValidationError, parse

Errors = Callable[[dict[str, Any]], list[tuple[str, str]]]


def errors_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The (path, message) pairs `parse` reports; an empty list when the document is valid."""
    try:
        parse(doc)
    except ValidationError as exc:
        return exc.pairs()
    return []


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with the dotted `path` (list indices as numbers) set to `value`."""
    out = copy.deepcopy(doc)
    node: Any = out
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out
