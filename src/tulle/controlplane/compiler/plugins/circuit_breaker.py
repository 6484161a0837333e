"""CircuitBreakerPolicy and `Mesh.spec.defaults.circuitBreaker` -> each Service cluster's
`limits` (ADR 0037 precedence; the proxy's cluster limits of ADR 0017).

For every Service port: the CircuitBreakerPolicies that apply (Service, then its namespace,
then the Mesh; at one level the oldest first), then the Mesh default, then the proxy's
built-in defaults (1024 / 1024 / 1024 / 3) are merged field by field with the shared helper
(`compiler/policies.py`).  Only what a level sets is written into `clusters[].limits`; the
rest is the proxy's default, so a mesh with no such policy compiles exactly as before.  Every
Service gets a `CircuitBreaker` condition naming each value and who set it (built-in defaults
included: the reconciler writes only the conditions a compilation has) — what `tulle describe
service` shows; each policy `Accepted=True` / `Enforced` naming the fields it won (or
`Overridden`), or `TargetNotFound`.  The limits apply to `tcp` ports as well: the relay's
connections count against `maxConnections` (ADR 0017).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from tulle.api.policies.circuit_breaker import CONTRACT, FIELDS
from tulle.controlplane.compiler.ir import Condition, MeshModel, ObjectRef, Policy, ServicePort
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.controlplane.compiler.policies import (
    BUILTIN_SOURCE,
    DEFAULTS_SOURCE,
    field_status,
    layered,
    merge_fields,
    source_of,
)
from tulle.proxyconfig.model import ClusterLimits

NAME = "circuit_breaker"
KIND = "CircuitBreakerPolicy"
CONDITION = "CircuitBreaker"
_BUILTIN = ClusterLimits()


def _port(sp: ServicePort, policies: list[Policy], defaults: Mapping[str, Any],
          used: dict[ObjectRef, set[str]], won: dict[ObjectRef, set[str]],
          ) -> tuple[ServicePort, str]:
    """`sp` with its merged limits, and the line `describe` shows for it."""
    applying = layered(policies, KIND, sp.key)
    layers: list[tuple[str, Mapping[str, Any]]] = [(source_of(p), p.spec) for p in applying]
    if defaults:
        layers.append((DEFAULTS_SOURCE, defaults))
    for p in applying:
        used.setdefault(p.ref, set()).update(f for f in FIELDS if p.spec.get(f) is not None)
    merged = merge_fields(layers, FIELDS)
    by_source = {source_of(p): p for p in applying}
    limits: dict[str, int] = {}
    parts: list[str] = []
    set_by: list[tuple[str, str]] = []
    for f in FIELDS:
        key = CONTRACT[f]
        value, src = merged.get(f, (getattr(_BUILTIN, key), BUILTIN_SOURCE))
        if src != BUILTIN_SOURCE:
            limits[key] = int(value)
            set_by.append((key, src))
            if src in by_source:
                won.setdefault(by_source[src].ref, set()).add(f)
        parts.append(f"{f}={value} ({src})")
    out = replace(sp, limits=limits or None, set_by=sp.set_by + tuple(set_by))
    return out, f"port {sp.port}: " + "; ".join(parts)


def apply(mesh: MeshModel) -> MeshModel:
    policies = [p for p in mesh.policies if p.kind == KIND]
    defaults: Mapping[str, Any] = {}
    if mesh.mesh is not None:
        defaults = (mesh.mesh.spec.get("defaults") or {}).get("circuitBreaker") or {}
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    used: dict[ObjectRef, set[str]] = {}
    won: dict[ObjectRef, set[str]] = {}
    services: list[ServicePort] = []
    described: dict[ObjectRef, tuple[int, list[str]]] = {}
    for sp in mesh.services:
        compiled, line = _port(sp, policies, defaults, used, won)
        services.append(compiled)
        described.setdefault(("Service", sp.namespace, sp.name), (sp.generation, []))[1].append(
            line)
    for ref, (gen, texts) in described.items():
        kept = tuple(c for c in conditions.get(ref, ()) if c.type != CONDITION)
        conditions[ref] = (*kept, Condition(CONDITION, True, "Resolved", " | ".join(texts), gen))
    for p in policies:
        conditions[p.ref] = (field_status(p, used.get(p.ref), won.get(p.ref, set())),)
    return replace(mesh, services=tuple(services), conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("services", "conditions"))
