"""LoadBalancingPolicy and `Mesh.spec.defaults.loadBalancing` -> each Service cluster's
`lb_policy` and `lb` (ADR 0037 precedence, ADR 0038 balancers).

For every Service port: the LoadBalancingPolicies that apply (Service, then its namespace, then
the Mesh; at one level the older first), then the Mesh default, then the built-in default
(peak-EWMA) are merged field by field; each compiled value keeps who set it
(`ServicePort.set_by`), and every Service gets a `LoadBalancing` condition listing them (its
ports' values and sources, built-in defaults included) — what `tulle describe service` shows.  The merged
result must fit the balancer it chose:

* a setting that does not fit the type and comes from a level no more specific than the type's
  (a Mesh-wide `slowStart` on a Service whose own policy picks `Maglev`) is not applied to
  that Service, and its `LoadBalancing` condition says so — a mesh-wide default must not break
  one Service's choice;
* one that is more specific than the type (a Service's `hashPolicies` with a type from the Mesh
  that does not hash), or a hashing type with no hash policies at all, is its author's
  mistake: that policy is `Accepted=False` / `Invalid` naming the Service, and the field (for
  a type: the type) is left out there, the rest still applies;
* what still fails the proxy's own check (`proxyconfig.lb_checks`: a ring too large, hashing
  on an opaque port) leaves the port at the built-in defaults and every contributing policy
  `Invalid` — never sent to be refused by every proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec.structs import replace

from tulle.api.policies.load_balancing import FIELDS
from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import Condition, MeshModel, ObjectRef, Policy, ServicePort
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.controlplane.compiler.policies import (
    BUILTIN_SOURCE,
    DEFAULTS_SOURCE,
    layered,
    merge_fields,
    source_of,
)
from tulle.proxyconfig.lb_checks import cluster_lb_errors
from tulle.proxyconfig.model import Cluster, Endpoint, LoadBalancing

NAME = "load_balancing"
KIND = "LoadBalancingPolicy"
DEFAULT_TYPE = "PeakEWMA"
TYPES = {"PeakEWMA": "peak_ewma", "RoundRobin": "round_robin", "Random": "random",
         "LeastRequest": "least_request", "RingHash": "ring_hash", "Maglev": "maglev"}
HASH_TYPES = {"Header": "header", "Cookie": "cookie", "SourceIP": "source_ip",
              "QueryParameter": "query_parameter"}
_DEFAULT_LB = msgspec.to_builtins(LoadBalancing())


def _contract(merged: Mapping[str, tuple[Any, str]]) -> tuple[str, dict[str, Any],
                                                              list[tuple[str, str]]]:
    """The contract's `lb_policy`, `lb` (only what differs from the proxy's defaults) and
    (contract value, source) pairs."""
    lb: dict[str, Any] = {}
    set_by: list[tuple[str, str]] = []

    def put(key: str, value: Any, source: str) -> None:
        set_by.append((key, source))
        if value != _DEFAULT_LB.get(key):
            lb[key] = value

    type_, type_src = merged.get("type", (DEFAULT_TYPE, BUILTIN_SOURCE))
    set_by.append(("lb_policy", type_src))
    for field, (value, src) in merged.items():
        if field == "hashPolicies":
            put("hash_policies", [{"type": HASH_TYPES[h["type"]], **(
                {"name": h["name"]} if h.get("name") else {})} for h in value], src)
        elif field == "ringHash":
            put("ring_points", value.get("pointsPerWeight", 160), src)
        elif field == "maglev":
            put("maglev_table_size", value.get("tableSize", 8191), src)
        elif field == "leastRequest":
            put("choice_count", value.get("choiceCount", 2), src)
        elif field == "peakEWMA":
            put("ewma_decay_ms", to_ms(str(value.get("decay", "10s"))), src)
        elif field == "slowStart":
            put("slow_start_window_ms", to_ms(str(value["window"])), src)
            put("slow_start_min_percent", value.get("minWeightPercent", 10), src)
        elif field == "localityAware":
            put("locality_aware", bool(value.get("enabled", True)), src)
        elif field == "panicThreshold":
            put("panic_threshold_percent", int(value), src)
    return TYPES[str(type_)], lb, set_by


def _errors(sp: ServicePort, policy: str, lb: dict[str, Any]) -> list[str]:
    try:
        cfg = Cluster(name=sp.cluster_name, lb_policy=policy,  # type: ignore[arg-type]
                      protocol="http1" if sp.protocol == "tcp" else sp.protocol,  # type: ignore[arg-type]
                      lb=msgspec.convert(lb, LoadBalancing),
                      endpoints=[Endpoint(address=e.address, port=e.port, weight=e.weight)
                                 for e in sp.endpoints])
    except (msgspec.ValidationError, ValueError) as exc:
        return [str(exc)]
    return [f"{e.path.removeprefix('cluster.')}: {e.message}"
            for e in cluster_lb_errors(cfg, "cluster")]


_HASHING = frozenset({"RingHash", "Maglev"})


def _unfit(field: str, value: Any, hashing: bool) -> bool:
    if hashing:
        return field == "slowStart" or (field == "localityAware" and bool(value.get("enabled",
                                                                                    True)))
    return field == "hashPolicies"


def _fit(merged: dict[str, tuple[Any, str]], order: list[str], by_source: dict[str, Policy],
         invalid: dict[ObjectRef, list[str]], skipped: dict[ObjectRef, set[str]],
         sp: ServicePort) -> list[str]:
    """Make `merged` fit its type, in place (module docstring); the notes for the Service.
    Policies whose field was left out for not fitting go to `skipped` (less specific than the
    type: their status says so) or `invalid` (more specific: their mistake)."""

    def rank(src: str) -> int:
        return order.index(src) if src in order else len(order)

    notes: list[str] = []
    where = f"Service {sp.namespace}/{sp.name} port {sp.port}"
    type_, type_src = merged.get("type", (DEFAULT_TYPE, BUILTIN_SOURCE))
    hashing = type_ in _HASHING
    if hashing and "hashPolicies" not in merged:
        culprit = by_source.get(type_src)
        if culprit is not None:
            invalid.setdefault(culprit.ref, []).append(
                f"{where}: type {type_} needs hashPolicies and no level sets them")
        else:
            notes.append(f"type {type_} ({type_src}): no level sets hashPolicies")
        merged.pop("type")
        merged.pop("hashPolicies", None)
        type_, type_src, hashing = DEFAULT_TYPE, BUILTIN_SOURCE, False
    for field in [f for f in merged if f != "type"]:
        value, src = merged[field]
        if not _unfit(field, value, hashing):
            continue
        del merged[field]
        if rank(src) >= rank(type_src):
            notes.append(f"{field} ({src}) does not apply to type {type_}")
            if src in by_source:
                skipped.setdefault(by_source[src].ref, set()).add(field)
        elif src in by_source:
            invalid.setdefault(by_source[src].ref, []).append(
                f"{where}: {field} does not apply to type {type_} (set by {type_src})")
    return notes


def _describe(set_by: list[tuple[str, str]], policy: str, lb: Mapping[str, Any]) -> str:
    parts = []
    for key, src in set_by:
        value = policy if key == "lb_policy" else lb.get(key, _DEFAULT_LB.get(key))
        parts.append(f"{key}={msgspec.json.encode(value).decode()} ({src})")
    return "; ".join(parts)


def apply(mesh: MeshModel) -> MeshModel:
    policies = [p for p in mesh.policies if p.kind == KIND]
    defaults: Mapping[str, Any] = {}
    if mesh.mesh is not None:
        defaults = (mesh.mesh.spec.get("defaults") or {}).get("loadBalancing") or {}
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    used: dict[ObjectRef, set[str]] = {}
    won: dict[ObjectRef, set[str]] = {}
    invalid: dict[ObjectRef, list[str]] = {}
    skipped: dict[ObjectRef, set[str]] = {}
    by_source = {source_of(p): p for p in policies}
    services: list[ServicePort] = []
    described: dict[ObjectRef, tuple[int, list[str]]] = {}
    for sp in mesh.services:
        applying = layered(policies, KIND, sp.key)
        layers = [(source_of(p), p.spec) for p in applying]
        if defaults:
            layers.append((DEFAULTS_SOURCE, defaults))
        for p in applying:
            used.setdefault(p.ref, set()).update(f for f in FIELDS if p.spec.get(f) is not None)
        merged = merge_fields(layers, FIELDS)
        notes = _fit(merged, [s for s, _ in layers], by_source, invalid, skipped, sp)
        policy, lb, set_by = _contract(merged)
        errors = _errors(sp, policy, lb)
        if errors:
            for src in {s for _, s in set_by if s in by_source}:
                invalid.setdefault(by_source[src].ref, []).extend(
                    f"Service {sp.namespace}/{sp.name} port {sp.port}: {e}" for e in errors)
            policy, lb, set_by = _contract({})
        else:
            for f, (_, src) in merged.items():
                if src in by_source:
                    won.setdefault(by_source[src].ref, set()).add(f)
        rendered: dict[str, Any] = {"lb_policy": policy}
        if lb:
            rendered["lb"] = lb
        services.append(replace(sp, lb=rendered, set_by=sp.set_by + tuple(set_by)))
        # Every Service, defaults or not: the reconciler only writes the conditions a
        # compilation has, so one left out would keep a deleted policy's name forever.
        described.setdefault(("Service", sp.namespace, sp.name), (sp.generation, []))[1].append(
            f"port {sp.port}: " + _describe(set_by, policy, lb)
            + ("; not applied: " + ", ".join(notes) if notes else ""))
    for ref, (gen, texts) in described.items():
        conditions[ref] = (*conditions.get(ref, ()), Condition(
            "LoadBalancing", True, "Resolved", " | ".join(texts), gen))
    for p in policies:
        conditions[p.ref] = (_status(p, used.get(p.ref), won.get(p.ref, set()),
                                     skipped.get(p.ref, set()), invalid.get(p.ref)),)
    return replace(mesh, services=tuple(services), conditions=conditions)


def _status(p: Policy, used: set[str] | None, won: set[str], skipped: set[str],
            invalid: list[str] | None) -> Condition:
    gen = p.generation
    if used is None:
        if p.target_kind == "Namespace" and p.target_name != p.namespace:
            why = f"namespace {p.target_name} is not the policy's own ({p.namespace})"
        elif p.target_found or p.target_kind == "Namespace":
            return Condition("Accepted", True, "Enforced", "applies to no Service port yet", gen)
        else:
            why = f"target {p.target_kind} {p.namespace}/{p.target_name} does not exist"
        return Condition("Accepted", False, "TargetNotFound", why, gen)
    if invalid:
        return Condition("Accepted", False, "Invalid",
                         "merged with the other levels, settings of it are refused (left out "
                         "there): " + "; ".join(sorted(set(invalid))),
                         gen)
    lost = sorted(used - won - skipped)
    unfit = sorted(skipped - won)
    parts = []
    if won:
        parts.append("sets " + ", ".join(sorted(won)))
    if lost:
        parts.append("overridden by a more specific or older policy: " + ", ".join(lost))
    if unfit:
        parts.append("not applied where a more specific level chose a type it does not fit: "
                     + ", ".join(unfit))
    return Condition("Accepted", True, "Enforced" if won else "Overridden", "; ".join(parts),
                     gen)


PLUGIN = Plugin(NAME, apply, affects=("services", "conditions"))
