"""What the `request_redirect` and `url_rewrite` plugins share: the user's filter -> the contract's config.

Both plugins read the Gateway API spelling (`requestRedirect` / `urlRewrite`, camelCase, a
path modifier `{type, replaceFullPath | replacePrefixMatch}`), convert it to the contract's
struct (`proxyconfig/filters/redirect.py`, `rewrite.py`) and check it exactly as the proxy
will (the rule's matches included: `ReplacePrefixMatch` needs them all `PathPrefix`).  A rule
with a refused setting is left out whole (answers 500) and the route's status names the
setting; Gateway API also makes a rule with both a `RequestRedirect` and a `URLRewrite`
invalid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Dropped, Route, Rule, RuleFilter
from tulle.proxyconfig import filters as proxy_filters
from tulle.proxyconfig.filters import HTTPFilter
from tulle.proxyconfig.validate import convert_error

_PATH_VALUE = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}


def path_modifier(user: Any, where: str, invalid: list[str]) -> dict[str, Any] | None:
    """Gateway API's `HTTPPathModifier` as the contract's `PathModifier`."""
    if not isinstance(user, dict):
        invalid.append(f"{where}: must be a mapping")
        return None
    kind = user.get("type")
    key = _PATH_VALUE.get(str(kind))
    if key is None:
        invalid.append(f"{where}.type: must be one of 'ReplaceFullPath', 'ReplacePrefixMatch', "
                       f"got {kind!r}")
        return None
    if user.get(key) is None:
        invalid.append(f"{where}.{key}: required with type {kind}")
        return None
    return {"type": kind, "value": user[key]}


def configure(plugin: str, kind: str, field: str, keys: dict[str, str]) -> Callable[
        [Route], Route]:
    """The route edit of a plugin that runs filter type `kind`, whose settings are in
    `field`; `keys` maps the user's setting names to the contract's (`path` is converted)."""

    def one(f: RuleFilter, r: Rule, user: dict[str, Any], where: str,
            invalid: list[str]) -> RuleFilter:
        spec = user.get(field) or {}
        entry: dict[str, Any] = {"type": kind}
        before = len(invalid)
        for theirs, ours in keys.items():
            if spec.get(theirs) is not None:
                entry[ours] = spec[theirs]
        if spec.get("path") is not None:
            entry["path"] = path_modifier(spec["path"], f"{where}.{field}.path", invalid)
        if len(invalid) > before:
            return replace(f, claimed_by=plugin)
        try:
            cfg: HTTPFilter = msgspec.convert(entry, HTTPFilter)
        except msgspec.ValidationError as exc:
            invalid.append(str(convert_error(exc, f"{where}.{field}")).replace(
                ".status_code:", ".statusCode:"))
            return replace(f, claimed_by=plugin)
        errs = proxy_filters.errors(cfg, f"{where}.{field}", [m.path.type for m in r.matches])
        if errs:
            invalid.extend(str(e) for e in errs)
            return replace(f, claimed_by=plugin)
        return replace(f, claimed_by=plugin, config=cfg)

    def rule(r: Rule, invalid: list[str]) -> Rule:
        if not any(f.type == kind for f in r.filters):
            return r
        user = r.spec.get("filters") or []
        before = len(invalid)
        types = [f.type for f in r.filters]
        if "RequestRedirect" in types and "URLRewrite" in types and kind == "URLRewrite":
            invalid.append(f"rules[{r.index}].filters: a rule may not have both a "
                           "RequestRedirect and a URLRewrite (Gateway API)")
        if types.count(kind) > 1:
            invalid.append(f"rules[{r.index}].filters: {kind} may appear once")
        filters = tuple(one(f, r, user[f.index], f"rules[{r.index}].filters[{f.index}]", invalid)
                        if f.type == kind else f for f in r.filters)
        return replace(r, filters=filters, left_out=r.left_out or len(invalid) > before)

    def route(rt: Route) -> Route:
        if not any(f.type == kind for r in rt.rules for f in r.filters):
            return rt
        invalid: list[str] = []
        rules = tuple(rule(r, invalid) for r in rt.rules)
        return replace(rt, rules=rules,
                       dropped=rt.dropped + tuple(Dropped(i, "invalid") for i in invalid))

    return route
