"""Policies attached by `targetRef` -> the model's policies, each with its target resolved;
the Mesh resource -> the model's mesh.

What a policy does is its plugin's job (`compiler/plugins/`); this module only finds out
whether the target exists, which every plugin and every status needs.  The target is looked up
in the policy's own namespace (Gateway API policy attachment); a `Mesh` target is the mesh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tulle.controlplane.compiler.inputs import MeshInputs, spec_of
from tulle.controlplane.compiler.ir import (
    Condition,
    Key,
    MeshResource,
    ObjectRef,
    Policy,
    Route,
    ServicePort,
)


def _target_exists(m: MeshInputs, ns: str, ref: dict[str, Any]) -> bool:
    kind, name = ref.get("kind"), ref.get("name")
    key = (ns, str(name))
    if kind == "Mesh":
        return m.mesh is None or (m.mesh.get("metadata") or {}).get("name") == name
    tables = {"Service": m.services, "HTTPRoute": m.http_routes, "GRPCRoute": m.grpc_routes,
              "TCPRoute": m.tcp_routes}
    return key in tables.get(str(kind), {})


def derive_mesh(m: MeshInputs) -> MeshResource | None:
    if m.mesh is None:
        return None
    md = m.mesh.get("metadata") or {}
    return MeshResource(name=str(md.get("name")), generation=int(md.get("generation") or 1),
                        spec=spec_of(m.mesh))


def derive_policies(m: MeshInputs) -> tuple[Policy, ...]:
    out: list[Policy] = []
    for (kind, ns, name), policy in sorted(m.policies.items()):
        spec = spec_of(policy)
        ref = spec.get("targetRef") or {}
        out.append(Policy(
            kind=kind, namespace=ns, name=name,
            generation=int((policy.get("metadata") or {}).get("generation") or 1),
            target_kind=str(ref.get("kind")), target_name=str(ref.get("name")),
            target_found=_target_exists(m, ns, ref), spec=spec,
            section=str(ref.get("sectionName") or ""),
            created=str((policy.get("metadata") or {}).get("creationTimestamp") or "")))
    return tuple(out)


# --- Precedence and provenance (ADR 0037), shared by the client-side policy plugins ----------

DEFAULTS_SOURCE = "Mesh.spec.defaults"
BUILTIN_SOURCE = "default"


def source_of(p: Policy) -> str:
    """How `describe` names a policy that set a value."""
    return f"{p.kind} {p.namespace}/{p.name}"


def _level(p: Policy, service: Key | None, route: ObjectRef | None,
           rule: str | None) -> int | None:
    """How specific `p`'s target is for traffic to `service` (and `route`, rule `rule`): 0 the
    route rule, 1 the route, 2 the Service, 3 its namespace, 4 the Mesh; None: it does not
    apply.  (Level 1 of ADR 0037, the route's own Gateway API field, is the plugin's.)"""
    if not p.target_found and p.target_kind != "Namespace":
        return None
    section = p.section or (p.spec.get("targetRef") or {}).get("sectionName")
    if p.target_kind == "Mesh":
        return 4
    if p.target_kind == "Namespace":
        return (3 if service is not None and p.target_name == p.namespace == service[0]
                else None)
    if p.target_kind == "Service":
        return 2 if service is not None and (p.namespace, p.target_name) == service else None
    if route is not None and (p.target_kind, p.namespace, p.target_name) == route:
        if not section:
            return 1
        return 0 if rule and section == rule else None
    return None


def layered(policies: Iterable[Policy], kind: str, service: Key | None,
            route: ObjectRef | None = None, rule: str | None = None) -> list[Policy]:
    """The policies of `kind` that apply to traffic for `service` (through `route`'s rule
    `rule`), most specific first; at one level the oldest first (then namespace/name): the
    first that sets a field wins it."""
    found: list[tuple[int, str, str, str, Policy]] = []
    for p in policies:
        if p.kind != kind:
            continue
        level = _level(p, service, route, rule)
        if level is not None:
            found.append((level, p.created, p.namespace, p.name, p))
    found.sort(key=lambda t: t[:4])
    return [t[4] for t in found]


def merge_fields(layers: Sequence[tuple[str, Mapping[str, Any]]],
                 fields: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """Field by field, the first layer (most specific first) that sets each field: its value
    and the layer's source (`"RetryPolicy ns/name"`, `"HTTPRoute ns/name rule r1"`,
    `DEFAULTS_SOURCE`, `BUILTIN_SOURCE`).  A field that is an object is taken whole (ADR 0037)."""
    out: dict[str, tuple[Any, str]] = {}
    for f in fields:
        for source, values in layers:
            value = values.get(f)
            if value is not None:
                out[f] = (value, source)
                break
    return out


def sources(set_by: Sequence[tuple[str, str]]) -> str:
    """`(field, source)` pairs as one line, fields grouped by who set them:
    `attempts, backoff from RetryPolicy shop/a; budget from Mesh.spec.defaults`."""
    groups: dict[str, list[str]] = {}
    for field, source in set_by:
        groups.setdefault(source, []).append(field)
    return "; ".join(f"{', '.join(fields)} from {source}" for source, fields in groups.items())


def provenance(routes: Iterable[Route], services: Iterable[ServicePort],
               field: str) -> dict[tuple[str, str, int], list[str]]:
    """Per Service: who set each value of its ports' default rules and clusters and of the
    rules of routes attached to it by their first parent, read from the `field` (a
    `(value, source)` tuple, e.g. `retry_set_by`) of `ServicePort` and the route `Rule`, as
    `with_provenance` takes it."""
    services = list(services)
    gens = {sp.key: sp.generation for sp in services}
    lines: dict[tuple[str, str, int], list[str]] = {}
    for sp in services:
        if set_by := getattr(sp, field):
            lines.setdefault((*sp.key, sp.generation), []).append(
                f"port {sp.port}: {sources(set_by)}")
    for route in routes:
        if not route.parents or route.parents[0][0] not in gens:
            continue
        key = route.parents[0][0]
        for r in route.rules:
            if set_by := getattr(r, field):
                label = r.spec.get("name") or f"rules[{r.index}]"
                lines.setdefault((*key, gens[key]), []).append(
                    f"{route.kind} {route.namespace}/{route.name} {label}: {sources(set_by)}")
    return lines


def with_provenance(conditions: Mapping[ObjectRef, tuple[Condition, ...]], type_: str,
                    lines: Mapping[tuple[str, str, int], list[str]],
                    ) -> dict[ObjectRef, tuple[Condition, ...]]:
    """`conditions` plus, on each Service with `lines` ((namespace, name, generation) ->
    what was set where), a condition `type_` listing them (`tulle describe service` shows who
    set each value, ADR 0037); another plugin's conditions on the Service are kept."""
    out = dict(conditions)
    for (ns, name, generation), said in sorted(lines.items()):
        ref = ("Service", ns, name)
        kept = tuple(c for c in out.get(ref, ()) if c.type != type_)
        out[ref] = (*kept, Condition(type_, True, "Applied", " | ".join(said), generation))
    return out


def field_status(p: Policy, used: set[str] | None, won: set[str]) -> Condition:
    """The status of a client-side policy merged field by field (ADR 0037): `used` the fields
    it sets on the Service ports it reached (None: it reached none), `won` those in force."""
    gen = p.generation
    if used is None:
        if p.target_kind == "Namespace" and p.target_name != p.namespace:
            return Condition("Accepted", False, "TargetNotFound",
                             f"namespace {p.target_name} is not the policy's own "
                             f"({p.namespace})", gen)
        if p.target_found or p.target_kind == "Namespace":
            return Condition("Accepted", True, "Enforced", "applies to no Service port yet",
                             gen)
        return Condition("Accepted", False, "TargetNotFound",
                         f"target {p.target_kind} {p.namespace}/{p.target_name} does not "
                         f"exist", gen)
    lost = sorted(used - won)
    if lost and not won:
        return Condition("Accepted", True, "Overridden", "every field it sets is set by a "
                         "more specific or older policy (or none of its ports can take it): "
                         + ", ".join(lost), gen)
    msg = "sets " + ", ".join(sorted(won))
    if lost:
        msg += "; overridden by a more specific or older policy: " + ", ".join(lost)
    return Condition("Accepted", True, "Enforced", msg, gen)


def namespace_status(p: Policy, used: bool) -> Condition:
    """The status of a policy targeting a Namespace (which is no stored resource, so
    `target_found` is False): it may only name its own (ADR 0037); `used`: it reached a
    Service."""
    if p.target_name != p.namespace:
        return Condition("Accepted", False, "TargetNotFound", f"namespace {p.target_name} is "
                         f"not the policy's own ({p.namespace})", p.generation)
    return Condition("Accepted", True, "Enforced",
                     f"applied to the Services of namespace {p.namespace}" if used
                     else f"namespace {p.namespace} has no Service yet", p.generation)


__all__ = [
    "BUILTIN_SOURCE",
    "DEFAULTS_SOURCE",
    "derive_mesh",
    "derive_policies",
    "field_status",
    "layered",
    "merge_fields",
    "namespace_status",
    "source_of",
    "sources",
    "with_provenance",
]
