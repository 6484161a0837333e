"""Policies attached by `targetRef` -> the model's policies, each with its target resolved;
the Mesh resource -> the model's mesh.

What a policy does is its plugin's job (`compiler/plugins/`); this module only finds out
whether the target exists, which every plugin and every status needs.  The target is looked up
in the policy's own namespace (Gateway API policy attachment); a `Mesh` target is the mesh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from tulle.controlplane.compiler.inputs import MeshInputs, spec_of
from tulle.controlplane.compiler.ir import Condition, MeshResource, ObjectRef, Policy


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


class SetBy(msgspec.Struct, frozen=True):
    """Who set one compiled value (ADR 0037): `"RetryPolicy ns/name"`, `"HTTPRoute ns/name
    rule r1"`, `"Mesh.spec.defaults"`, `"default"`."""

    source: str


def layered(policies: Iterable[Policy], kind: str, service: tuple[str, str] | None,
            route: tuple[str, str, str] | None = None, rule: str = "") -> list[Policy]:
    """The policies of `kind` that apply, most specific first: the route rule (`route` =
    (kind, namespace, name) and `rule` its name), the route, the Service (namespace, name),
    the Mesh.  Within a level the oldest first (then namespace/name): the first wins."""
    levels: list[list[Policy]] = [[], [], [], []]
    for p in policies:
        if p.kind != kind or not p.target_found:
            continue
        if route is not None and (p.target_kind, p.namespace, p.target_name) == route:
            if p.section:
                if rule and p.section == rule:
                    levels[0].append(p)
            else:
                levels[1].append(p)
        elif (service is not None and p.target_kind == "Service"
              and (p.namespace, p.target_name) == service):
            levels[2].append(p)
        elif p.target_kind == "Mesh":
            levels[3].append(p)
    out: list[Policy] = []
    for level in levels:
        out.extend(sorted(level, key=lambda p: (p.created, p.namespace, p.name)))
    return out


def merge_fields(layers: Sequence[tuple[str, Mapping[str, Any]]],
                 fields: Iterable[str]) -> dict[str, tuple[Any, SetBy]]:
    """Field by field, the first layer (most specific first) that sets a field wins; an
    object-valued field is one value.  `layers`: (source, spec or defaults)."""
    out: dict[str, tuple[Any, SetBy]] = {}
    for f in fields:
        for source, spec in layers:
            value = spec.get(f)
            if value is not None:
                out[f] = (value, SetBy(source))
                break
    return out


def sources(set_by: Sequence[tuple[str, str]]) -> str:
    """`(field, source)` pairs as one line, fields grouped by who set them:
    `attempts, backoff from RetryPolicy shop/a; budget from Mesh.spec.defaults`."""
    groups: dict[str, list[str]] = {}
    for field, source in set_by:
        groups.setdefault(source, []).append(field)
    return "; ".join(f"{', '.join(fields)} from {source}" for source, fields in groups.items())


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


__all__ = ["SetBy", "derive_mesh", "derive_policies", "layered", "merge_fields", "sources",
           "with_provenance"]
