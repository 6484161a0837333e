"""Retries: a route rule's Gateway API `retry`, `RetryPolicy` and the Mesh's retry budget ->
each rule's `retry` and each Service cluster's `retry_budget` (ADR 0037 precedence, ADR 0039).

For a route rule the layers are, most specific first: the rule's own `retry` (Gateway API,
GEP-1731: `attempts`, `codes`, `backoff`; connection errors -- connect failure, reset, refused
stream -- are always retried, as the GEP asks), a RetryPolicy on the rule (`sectionName`), on
the route, on the route's Service (its first parent), on the Mesh, then
`Mesh.spec.defaults.retry`.  Field by field the first layer that sets a field wins; `backoff`
and `budget` are one value each.  A Service's default rule (no route attached) takes the
Service, Mesh and Mesh-default layers.  A rule that ends with no field set has no retries:
retries are opt-in, the budget is not (every Service cluster has one: a RetryPolicy's `budget`
on the Service or Mesh, else `Mesh.spec.defaults.retryBudget`, else the proxy's 20% + 10/s
over 10 s).

Each compiled value keeps who set it (`retry_set_by`, for `tulle describe`).  Every RetryPolicy
whose target exists gets `Accepted`: `True`/`Enforced`, or `False`/`SectionNotFound` when its
`sectionName` names no rule of the route.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from tulle.api.policies.retry import GRPC_CODES
from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import (
    Condition,
    Dropped,
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
from tulle.proxyconfig.retry import RetryBudget, RetryPolicy

NAME = "retries"
KIND = "RetryPolicy"
RULE_FIELDS = ("attempts", "retryOn", "statusCodes", "grpcStatuses", "backoff", "nonIdempotent",
               "maxReplayBytes")
_CONTRACT = RetryPolicy()
_BUDGET = RetryBudget()
GATEWAY_RETRY_ON = ["connect-failure", "refused-stream", "reset"]
"""What a Gateway API `retry` stanza always retries (GEP-1731: connection errors)."""
MAX_ATTEMPTS = 10


def _gateway_layer(r: Rule, where: str, dropped: list[Dropped]) -> dict[str, Any] | None:
    """A rule's own Gateway API `retry` in RetryPolicy's shape; None when it has none."""
    g = r.spec.get("retry")
    if not isinstance(g, Mapping):
        return None
    out: dict[str, Any] = {"retryOn": list(GATEWAY_RETRY_ON)}
    attempts = g.get("attempts")
    if attempts is not None:
        if int(attempts) > MAX_ATTEMPTS:
            dropped.append(Dropped(f"{where}.attempts: {attempts} is more than the proxy makes "
                                   f"({MAX_ATTEMPTS})", "unsupported"))
            return None
        out["attempts"] = int(attempts)
    if g.get("codes"):
        out["statusCodes"] = [int(c) for c in g["codes"]]
    if g.get("backoff"):
        try:
            base = to_ms(str(g["backoff"]))
        except ValueError as exc:
            dropped.append(Dropped(f"{where}.backoff: {exc}", "invalid"))
            return None
        if not 1 <= base <= 60_000:
            dropped.append(Dropped(f"{where}.backoff: must be between 1ms and 1m", "invalid"))
            return None
        out["backoff"] = {"baseInterval": f"{base}ms",
                          "maxInterval": f"{max(base, _CONTRACT.backoff_max_ms)}ms"}
    return out


def to_contract(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merged RetryPolicy fields -> the contract's `RetryPolicy` (only what differs from its
    defaults); None when no field is set."""
    if not values:
        return None
    out: dict[str, Any] = {}
    if "attempts" in values:
        out["num_retries"] = int(values["attempts"])
    retry_on = list(values.get("retryOn") or _CONTRACT.retry_on)
    if values.get("statusCodes"):
        out["status_codes"] = sorted({int(c) for c in values["statusCodes"]})
        retry_on.append("retriable-status-codes")
    if values.get("grpcStatuses"):
        out["grpc_statuses"] = sorted({GRPC_CODES[s] for s in values["grpcStatuses"]})
        retry_on.append("retriable-grpc-statuses")
    if retry_on != list(_CONTRACT.retry_on):
        out["retry_on"] = retry_on
    backoff = values.get("backoff")
    if backoff:
        out["backoff_base_ms"] = to_ms(str(backoff.get("baseInterval", "25ms")))
        out["backoff_max_ms"] = to_ms(str(backoff.get("maxInterval", "250ms")))
    if values.get("nonIdempotent"):
        out["retry_non_idempotent"] = True
    if values.get("maxReplayBytes") is not None:
        out["max_body_bytes"] = int(values["maxReplayBytes"])
    return out


def _budget(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """An API `RetryBudget` -> the contract's (None: the proxy's default, not rendered)."""
    out = {"percent": int(values.get("percent", _BUDGET.percent)),
           "min_retries_per_second": int(values.get("minRetriesPerSecond",
                                                     _BUDGET.min_retries_per_second)),
           "ttl_ms": to_ms(str(values.get("ttl", "10s")))}
    if out == {"percent": _BUDGET.percent,
               "min_retries_per_second": _BUDGET.min_retries_per_second,
               "ttl_ms": _BUDGET.ttl_ms}:
        return None
    return out


def _source(p: Policy) -> str:
    return f"{KIND} {p.namespace}/{p.name}"


def _merge(layers: list[tuple[str, Mapping[str, Any]]],
           fields: tuple[str, ...]) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    merged = merge_fields(layers, fields)
    return ({f: v for f, (v, _) in merged.items()},
            tuple((f, by) for f, (_, by) in merged.items()))


def _route(route: Route, policies: tuple[Policy, ...], used: set[ObjectRef],
           mesh_retry: Mapping[str, Any] | None) -> Route:
    service = route.parents[0][0] if route.parents else None
    ref = (route.kind, route.namespace, route.name)
    dropped: list[Dropped] = []
    rules = []
    for r in route.rules:
        section = str(r.spec.get("name") or "")
        layers: list[tuple[str, Mapping[str, Any]]] = []
        own = _gateway_layer(r, f"rules[{r.index}].retry", dropped)
        if own is not None:
            layers.append((f"{route.kind} {route.namespace}/{route.name} "
                           f"rules[{r.index}].retry", own))
        for p in layered(policies, KIND, service, ref, section):
            layers.append((_source(p), p.spec))
            used.add(p.ref)
        if mesh_retry is not None:
            layers.append(("Mesh.spec.defaults.retry", mesh_retry))
        values, set_by = _merge(layers, RULE_FIELDS)
        retry = to_contract(values)
        rules.append(replace(r, retry=retry, retry_set_by=set_by) if retry is not None else r)
    if not dropped and all(a is b for a, b in zip(rules, route.rules, strict=True)):
        return route
    return replace(route, rules=tuple(rules), dropped=route.dropped + tuple(dropped))


def _service(sp: ServicePort, policies: tuple[Policy, ...], mesh_budget: Any,
             used: set[ObjectRef], mesh_retry: Mapping[str, Any] | None) -> ServicePort:
    layers: list[tuple[str, Mapping[str, Any]]] = []
    for p in layered(policies, KIND, sp.key):
        layers.append((_source(p), p.spec))
        used.add(p.ref)
    if mesh_retry is not None:
        layers.append(("Mesh.spec.defaults.retry", mesh_retry))
    if isinstance(mesh_budget, Mapping):
        layers.append(("Mesh.spec.defaults", {"budget": mesh_budget}))
    values, set_by = _merge(layers, (*RULE_FIELDS, "budget"))
    budget = _budget(values.pop("budget")) if "budget" in values else None
    retry = to_contract(values)
    if retry is None and budget is None:
        return sp
    return replace(sp, retry=retry, retry_budget=budget, retry_set_by=set_by)


def _conditions(mesh: MeshModel, used: set[ObjectRef]) -> dict[ObjectRef, tuple[Condition, ...]]:
    rule_names = {(r.kind, r.namespace, r.name): {str(x.spec.get("name")) for x in r.rules
                                                  if x.spec.get("name")}
                  for r in mesh.routes}
    out: dict[ObjectRef, tuple[Condition, ...]] = {}
    for p in mesh.policies:
        if p.kind == KIND and p.target_kind == "Namespace":
            out[p.ref] = (namespace_status(p, p.ref in used),)
            continue
        if p.kind != KIND or not p.target_found:
            continue  # (a missing target: unenforced_policies says TargetNotFound)
        names = rule_names.get((p.target_kind, p.namespace, p.target_name))
        if p.section and names is not None and p.section not in names:
            out[p.ref] = (Condition("Accepted", False, "SectionNotFound",
                                    f"{p.target_kind} {p.namespace}/{p.target_name} has no "
                                    f"rule named {p.section!r}", p.generation),)
        elif p.ref in used or p.target_kind == "Mesh":
            out[p.ref] = (Condition("Accepted", True, "Enforced",
                                    "applied to the rules and Service clusters it targets",
                                    p.generation),)
        else:
            out[p.ref] = (Condition("Accepted", True, "Enforced",
                                    "nothing routes through the target yet", p.generation),)
    return out


def apply(mesh: MeshModel) -> MeshModel:
    policies = tuple(p for p in mesh.policies if p.kind == KIND)
    defaults = (mesh.mesh.spec.get("defaults") or {}) if mesh.mesh is not None else {}
    mesh_budget = defaults.get("retryBudget")
    mesh_retry = defaults.get("retry") if isinstance(defaults.get("retry"), Mapping) else None
    used: set[ObjectRef] = set()
    routes = tuple(_route(r, policies, used, mesh_retry) for r in mesh.routes)
    services = tuple(_service(sp, policies, mesh_budget, used, mesh_retry)
                     for sp in mesh.services)
    conditions = with_provenance({**mesh.conditions, **_conditions(mesh, used)},
                                 "RetriesApplied",
                                 provenance(routes, services, "retry_set_by"))
    return replace(mesh, routes=routes, services=services, conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("routes", "services", "conditions"))

