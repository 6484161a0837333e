"""Gateway API `RequestHeaderModifier` / `ResponseHeaderModifier` -> the rule's header filters.

Each such filter of a rule becomes the contract's filter config of the same name
(`proxyconfig/filters/headers.py`), checked as the proxy will check it.  A rule with settings
the proxy would refuse (editing `Host`, a pseudo-header, an invalid name) is left out whole —
forwarding it without the edit the user asked for would be doing something else quietly — and
the route's status lists every refused setting with its path (`rules[i].filters[j]...`).

The same filters on a `backendRef` (`rules[i].backendRefs[k].filters`) apply only to requests
sent to that backend.  They are the only filter types Tulle takes on a backend: any other type
there leaves its rule out, reported as not supported.
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Dropped, MeshModel, Route, Rule, RuleFilter
from tulle.controlplane.compiler.plugins.base import Plugin, claim_filter, map_routes

NAME = "header_modifiers"

FIELDS = {"RequestHeaderModifier": "requestHeaderModifier",
          "ResponseHeaderModifier": "responseHeaderModifier"}
"""The filter types this plugin runs, and the field each one's settings are in."""


def _configure(f: RuleFilter, user: dict[str, Any], path: str,
               invalid: list[str]) -> RuleFilter:
    spec = user.get(FIELDS[f.type]) or {}
    entry: dict[str, Any] = {"type": f.type}
    for key in ("set", "add", "remove"):
        if spec.get(key):
            entry[key] = spec[key]
    return claim_filter(f, NAME, entry, path, invalid)


def _backend_filters(r: Rule, invalid: list[str], unsupported: list[str]) -> Rule:
    """Each backendRef's own filters onto its backend (backends are 1:1 with backendRefs)."""
    refs = r.spec.get("backendRefs") or []
    if len(refs) != len(r.backends) or not any(ref.get("filters") for ref in refs):
        return r
    before = len(invalid) + len(unsupported)
    clusters = [b.cluster for b in r.backends]
    for k, c in enumerate(clusters):
        if c in clusters[:k]:  # the proxy picks a cluster, then its filters: one per cluster
            invalid.append(f"rules[{r.index}].backendRefs[{k}]: the same backend twice (or two "
                           "that do not resolve) in a rule with backendRef filters")
    backends = []
    for k, (ref, b) in enumerate(zip(refs, r.backends, strict=True)):
        configs = []
        for j, user in enumerate(ref.get("filters") or []):
            kind = str(user.get("type"))
            where = f"rules[{r.index}].backendRefs[{k}].filters[{j}]"
            if kind not in FIELDS:
                unsupported.append(f"filter {kind} on a backendRef ({where})")
                continue
            f = _configure(RuleFilter(j, kind), user, where, invalid)
            if f.config is not None:
                configs.append(f.config)
        backends.append(replace(b, filters=tuple(configs)))
    return replace(r, backends=tuple(backends),
                   left_out=r.left_out or len(invalid) + len(unsupported) > before)


def _rule(r: Rule, invalid: list[str], unsupported: list[str]) -> Rule:
    r = _backend_filters(r, invalid, unsupported)
    if not any(f.type in FIELDS for f in r.filters):
        return r
    user = r.spec.get("filters") or []
    before = len(invalid)
    filters = tuple(_configure(f, user[f.index], f"rules[{r.index}].filters[{f.index}]", invalid)
                    if f.type in FIELDS else f for f in r.filters)
    return replace(r, filters=filters, left_out=r.left_out or len(invalid) > before)


def _route(route: Route) -> Route:
    if not any(f.type in FIELDS for r in route.rules for f in r.filters) and not any(
            ref.get("filters") for r in route.rules for ref in r.spec.get("backendRefs") or []):
        return route
    invalid: list[str] = []
    unsupported: list[str] = []
    rules = tuple(_rule(r, invalid, unsupported) for r in route.rules)
    return replace(route, rules=rules,
                   dropped=route.dropped + tuple(Dropped(i, "invalid") for i in invalid)
                   + tuple(Dropped(u, "unsupported") for u in unsupported))


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
