"""Gateway API `RequestMirror` -> the rule's mirror filter (`proxyconfig/filters/mirror.py`).

The mirror's `backendRef` is resolved to a Service port's cluster (every HTTP Service port's
cluster is in every proxy's snapshot); `percent: p` becomes `p / 100`, `fraction` itself,
neither: every request.  Refused, leaving the rule out (500) with the path in the route's
status: a backend that is not a Service, that does not exist, that speaks opaque TCP, one in
another namespace that no ReferenceGrant there admits (Gateway API: a cross-namespace
reference needs the target namespace's consent, as for backendRefs), both `percent` and
`fraction`, and a fraction above 1.  Fire-and-forget semantics and bounds are the
proxy's (`dataplane/filters/mirror.py`).
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Dropped, MeshModel, Route, Rule, RuleFilter
from tulle.controlplane.compiler.plugins.base import Plugin, claim_filter, map_routes

NAME = "request_mirror"
KIND = "RequestMirror"


def _cluster(mesh: MeshModel, kind: str, ns: str, ref: Any, where: str,
             invalid: list[str]) -> str | None:
    if not isinstance(ref, dict) or not ref.get("name"):
        invalid.append(f"{where}.backendRef: required, with a name")
        return None
    if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
        invalid.append(f"{where}.backendRef: only Service backends are supported")
        return None
    to_ns = ref.get("namespace") or ns
    if to_ns != ns and not any(g.admits(kind, ns, to_ns, ref["name"]) for g in mesh.grants):
        invalid.append(f"{where}.backendRef: {to_ns}/{ref['name']} is in another namespace and "
                       f"no ReferenceGrant in {to_ns} lets {kind}s in {ns} refer to it")
        return None
    port = ref.get("port")
    for sp in mesh.services:
        if sp.namespace == to_ns and sp.name == ref["name"] and sp.port == port:
            if sp.protocol == "tcp":
                invalid.append(f"{where}.backendRef: {to_ns}/{sp.name}:{port} is opaque TCP")
                return None
            return sp.cluster_name
    invalid.append(f"{where}.backendRef: {to_ns}/{ref['name']}:{port} does not exist")
    return None


def _configure(mesh: MeshModel, kind: str, ns: str, f: RuleFilter, user: dict[str, Any], where: str,
               invalid: list[str]) -> RuleFilter:
    spec = user.get("requestMirror") or {}
    where = f"{where}.requestMirror"
    before = len(invalid)
    cluster = _cluster(mesh, kind, ns, spec.get("backendRef"), where, invalid)
    entry: dict[str, Any] = {"type": KIND, "cluster": cluster}
    percent, fraction = spec.get("percent"), spec.get("fraction")
    if percent is not None and fraction is not None:
        invalid.append(f"{where}: percent and fraction may not both be set")
    elif percent is not None:
        entry.update(numerator=percent, denominator=100)
    elif fraction is not None:
        entry.update(numerator=(fraction or {}).get("numerator"),
                     denominator=(fraction or {}).get("denominator", 100))
    if len(invalid) > before:
        return replace(f, claimed_by=NAME)
    return claim_filter(f, NAME, entry, where, invalid)


def _rule(mesh: MeshModel, kind: str, ns: str, r: Rule, invalid: list[str]) -> Rule:
    if not any(f.type == KIND for f in r.filters):
        return r
    user = r.spec.get("filters") or []
    before = len(invalid)
    filters = tuple(_configure(mesh, kind, ns, f, user[f.index],
                               f"rules[{r.index}].filters[{f.index}]", invalid)
                    if f.type == KIND else f for f in r.filters)
    return replace(r, filters=filters, left_out=r.left_out or len(invalid) > before)


def apply(mesh: MeshModel) -> MeshModel:
    def route(rt: Route) -> Route:
        if not any(f.type == KIND for r in rt.rules for f in r.filters):
            return rt
        invalid: list[str] = []
        rules = tuple(_rule(mesh, rt.kind, rt.namespace, r, invalid) for r in rt.rules)
        return replace(rt, rules=rules,
                       dropped=rt.dropped + tuple(Dropped(i, "invalid") for i in invalid))

    return map_routes(mesh, route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
