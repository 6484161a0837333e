"""`TimeoutPolicy` -> the timeouts of route rules and Service clusters (ADR 0037, ADR 0039).

Per route rule, most specific first: the rule's own Gateway API `timeouts` (`route_timeouts`
ran before and set them), a TimeoutPolicy on the rule (`sectionName`), on the route, on the
route's Service (its first parent), on the Mesh; the first that sets a field wins:
`requestTimeout` -> the rule's `timeout_ms` (unset: the proxy's `settings.request_timeout_ms`,
which `Mesh.spec.defaults.requestTimeout` sets), `perTryTimeout` -> `backend_timeout_ms`,
`streamIdleTimeout` -> `stream_idle_timeout_ms`.  A Service's default rule (no route) takes
the Service and Mesh layers.  Per Service cluster: `connectTimeout` -> `connect_timeout_ms`
(over `Mesh.spec.defaults.connectTimeout`), `idleTimeout` -> `idle_timeout_ms` (idle upstream
connections).  "0s" disables a request, per-try or stream idle timeout.

A per-try timeout longer than the request timeout it would run under is left out of that rule
(the proxy would refuse the snapshot) and the policy that set it says so in its status.  Every
TimeoutPolicy whose target exists and is HTTP gets `Accepted`; one on a TCPRoute is left to
`unenforced_policies` (TCPRoutes are not run yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import (
    Condition,
    MeshModel,
    ObjectRef,
    Policy,
    Route,
    Rule,
    ServicePort,
)
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.controlplane.compiler.policies import (
    layered,
    merge_fields,
    namespace_status,
    provenance,
    with_provenance,
)

NAME = "timeouts"
KIND = "TimeoutPolicy"
RULE_FIELDS = {"requestTimeout": "timeout_ms", "perTryTimeout": "backend_timeout_ms",
               "streamIdleTimeout": "stream_idle_timeout_ms"}
CLUSTER_FIELDS = {"connectTimeout": "connect_timeout_ms", "idleTimeout": "idle_timeout_ms"}


def _source(p: Policy) -> str:
    return f"{KIND} {p.namespace}/{p.name}"


def _layers(policies: tuple[Policy, ...], service: tuple[str, str] | None,
            route: tuple[str, str, str] | None, section: str,
            used: set[ObjectRef]) -> list[tuple[str, Mapping[str, Any]]]:
    out: list[tuple[str, Mapping[str, Any]]] = []
    for p in layered(policies, KIND, service, route, section):
        out.append((_source(p), p.spec))
        used.add(p.ref)
    return out


def _rule_values(layers: list[tuple[str, Mapping[str, Any]]], own: dict[str, int | None],
                 where: str, notes: dict[str, list[str]],
                 ) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The contract timeouts policies set on one rule (fields `own` has are the rule's own
    and stay), and who set each."""
    merged = merge_fields(layers, RULE_FIELDS)
    values: dict[str, int] = {}
    set_by: list[tuple[str, str]] = []
    for field, (text, by) in merged.items():
        ours = RULE_FIELDS[field]
        if own.get(ours) is not None:
            continue
        values[ours] = to_ms(str(text))
        set_by.append((field, by))
    request = own.get("timeout_ms") if own.get("timeout_ms") is not None \
        else values.get("timeout_ms")
    per_try = values.get("backend_timeout_ms")
    if per_try and request and per_try > request:
        del values["backend_timeout_ms"]
        source = dict(set_by).pop("perTryTimeout")
        set_by = [(f, s) for f, s in set_by if f != "perTryTimeout"]
        notes.setdefault(source, []).append(
            f"perTryTimeout left out on {where}: longer than its request timeout ({request} ms)")
    return values, tuple(set_by)


def _route(route: Route, policies: tuple[Policy, ...], used: set[ObjectRef],
           notes: dict[str, list[str]]) -> Route:
    service = route.parents[0][0] if route.parents else None
    ref = (route.kind, route.namespace, route.name)
    rules: list[Rule] = []
    for r in route.rules:
        section = str(r.spec.get("name") or "")
        layers = _layers(policies, service, ref, section, used)
        if not layers:
            rules.append(r)
            continue
        t = r.spec.get("timeouts") or {}
        own = {"timeout_ms": r.timeout_ms if t.get("request") else None,
               "backend_timeout_ms": (r.backend_timeout_ms or 0)
               if t.get("backendRequest") else None}
        where = f"{route.kind} {route.namespace}/{route.name} rules[{r.index}]"
        values, set_by = _rule_values(layers, own, where, notes)
        if not values:
            rules.append(r)
            continue
        backend = values.get("backend_timeout_ms", r.backend_timeout_ms)
        rules.append(replace(r, timeout_ms=values.get("timeout_ms", r.timeout_ms),
                             backend_timeout_ms=backend or None,
                             stream_idle_timeout_ms=values.get("stream_idle_timeout_ms")
                             or None, timeout_set_by=set_by))
    if all(a is b for a, b in zip(rules, route.rules, strict=True)):
        return route
    return replace(route, rules=tuple(rules))


def _service(sp: ServicePort, policies: tuple[Policy, ...], used: set[ObjectRef],
             notes: dict[str, list[str]]) -> ServicePort:
    layers = _layers(policies, sp.key, None, "", used)
    if not layers:
        return sp
    where = f"the default rule of Service {sp.namespace}/{sp.name}:{sp.port}"
    rule_values, rule_by = _rule_values(layers, {}, where, notes)
    merged = merge_fields(layers, CLUSTER_FIELDS)
    cluster = {CLUSTER_FIELDS[f]: to_ms(str(v)) for f, (v, _) in merged.items()}
    set_by = rule_by + tuple((f, by) for f, (_, by) in merged.items())
    return replace(sp, default_timeouts={k: v for k, v in rule_values.items()
                                         if v or k == "timeout_ms"},  # (0: no limit)
                   cluster_timeouts=cluster, timeout_set_by=set_by)


def _conditions(mesh: MeshModel, used: set[ObjectRef],
                notes: dict[str, list[str]]) -> dict[ObjectRef, tuple[Condition, ...]]:
    rule_names = {(r.kind, r.namespace, r.name): {str(x.spec.get("name")) for x in r.rules
                                                  if x.spec.get("name")}
                  for r in mesh.routes}
    out: dict[ObjectRef, tuple[Condition, ...]] = {}
    for p in mesh.policies:
        if p.kind == KIND and p.target_kind == "Namespace":
            out[p.ref] = (namespace_status(p, p.ref in used),)
            continue
        if p.kind != KIND or not p.target_found or p.target_kind == "TCPRoute":
            continue
        names = rule_names.get((p.target_kind, p.namespace, p.target_name))
        if p.section and names is not None and p.section not in names:
            cond = Condition("Accepted", False, "SectionNotFound",
                             f"{p.target_kind} {p.namespace}/{p.target_name} has no rule named "
                             f"{p.section!r}", p.generation)
        else:
            said = notes.get(_source(p))
            message = ("applied to the rules and Service clusters it targets"
                       if p.ref in used or p.target_kind == "Mesh"
                       else "nothing routes through the target yet")
            if said:
                message += "; " + "; ".join(said)
            cond = Condition("Accepted", True, "Enforced", message, p.generation)
        out[p.ref] = (cond,)
    return out


def apply(mesh: MeshModel) -> MeshModel:
    policies = tuple(p for p in mesh.policies if p.kind == KIND and p.target_kind != "TCPRoute")
    if not policies and not any(p.kind == KIND for p in mesh.policies):
        return mesh
    used: set[ObjectRef] = set()
    notes: dict[str, list[str]] = {}
    routes = tuple(_route(r, policies, used, notes) for r in mesh.routes)
    services = tuple(_service(sp, policies, used, notes) for sp in mesh.services)
    conditions = with_provenance({**mesh.conditions, **_conditions(mesh, used, notes)},
                                 "TimeoutsApplied",
                                 provenance(routes, services, "timeout_set_by"))
    return replace(mesh, routes=routes, services=services, conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("routes", "services", "conditions"))

