"""Label selectors for `ResourceStore.list`: Kubernetes' string syntax, parsed once, matched
against `metadata.labels`.

Supported requirements, comma-separated and ANDed: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
`k notin (a,b)`, `k` (exists), `!k` (does not exist).  A mapping means `k=v` for each item.
`!=` and `notin` match objects without the label, as in Kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tulle.controlplane.store.errors import StoreError

Matcher = Callable[[Mapping[str, Any]], bool]

_SET_RE = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_CMP_RE = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=(),]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*$")


class SelectorError(StoreError, ValueError):
    """A label selector string that does not parse."""


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return parts


def _requirement(text: str) -> Matcher:
    if m := _SET_RE.match(text):
        key = m["key"]
        values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
        if m["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _CMP_RE.match(text):
        key, value = m["key"], m["value"]
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if m := _EXISTS_RE.match(text):
        key = m["key"]
        if m["neg"]:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"invalid label selector requirement: {text.strip()!r}")


def compile_selector(selector: str | Mapping[str, str]) -> Matcher:
    """A predicate over a labels mapping; `SelectorError` if the string does not parse."""
    if not isinstance(selector, str):
        wanted = dict(selector)
        return lambda labels: all(k in labels and labels[k] == v for k, v in wanted.items())
    if not selector.strip():
        return lambda labels: True
    matchers = [_requirement(part) for part in _split(selector)]
    return lambda labels: all(m(labels) for m in matchers)


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return labels if isinstance(labels, Mapping) else {}
