"""`AuthorizationPolicy` -> the policies each workload's proxy enforces on its inbound ports.

Istio's model (ADR 0031).  A policy applies to the workloads of its target: every proxy (the
Mesh), the proxies of its own namespace (`Namespace` named like it), or the endpoints' workloads
of a Service.  Per inbound port the proxy gets every policy that applies to its workload, in
(namespace, name) order, with `to.ports` resolved against the port the workload's proxy listens
on (`Workload.spec.ports[].port`): an operation for other ports is dropped, and a rule left with
no operation is dropped (an ALLOW policy still applies to the port: with no rule left it allows
nothing there, as in Istio).  `methods: ["*"]` is no method condition.  Rendering
(`proxies.inbound`) puts them in an `Authorization` filter (HTTP ports) or an `authz` network
filter (`tcp` ports).

Status: `Accepted=True` naming how many workloads enforce it, `TargetNotFound` otherwise.  A
policy whose rules use identities (`identities`, `namespaces`, `serviceAccounts`) while the
mesh-wide mTLS is not STRICT (`mtls.mesh_mode`, a Mesh-targeted MutualTLSPolicy included) gets
`IdentitiesVerified=False` (`MTLSNotEnforced`): such rules never match a plaintext caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec.structs import replace

from tulle.controlplane.compiler import authz_labels
from tulle.controlplane.compiler.ir import (
    Condition,
    InboundAuthz,
    Key,
    MeshModel,
    ObjectRef,
    Policy,
    Proxy,
)
from tulle.controlplane.compiler.plugins import mesh_settings, mtls
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.proxyconfig.filters.authz import AuthzPolicy

NAME = "authorization"
KIND = "AuthorizationPolicy"


def mtls_enforced(mesh: MeshModel) -> bool:
    """The mesh-wide mTLS mode is STRICT (the default, with or without a Mesh resource; a
    Mesh-targeted MutualTLSPolicy counts) and the proxies do it (ADR 0033)."""
    if mesh.mesh is not None:
        applied, _ = mesh_settings.not_in_force(mesh.mesh.spec)
        if not any(a.startswith("mtls.mode ") for a in applied):
            return False
    return mtls.Decisions(mesh).mesh_level(mtls.mesh_mode(mesh)) == "STRICT"


def _uses_identities(spec: Mapping[str, Any]) -> bool:
    return any(s.get("identities") or s.get("namespaces") or s.get("serviceAccounts")
               or s.get("workloadLabels")
               for r in spec.get("rules") or [] for s in r.get("from") or [])


def _source(s: Mapping[str, Any]) -> dict[str, Any]:
    return {"principals": s.get("identities") or [], "namespaces": s.get("namespaces") or [],
            "service_accounts": s.get("serviceAccounts") or [],
            "ip_blocks": s.get("ipBlocks") or []}


def _operation(o: Mapping[str, Any]) -> dict[str, Any]:
    methods = o.get("methods") or []
    return {"paths": o.get("paths") or [], "methods": [] if "*" in methods else methods,
            "headers": [{"name": h["name"], "values": h["values"]} for h in o.get("headers") or []]}


def for_port(p: Policy, port: int) -> AuthzPolicy:
    """The contract policy of `p` on inbound port `port` (ports resolved)."""
    rules: list[dict[str, Any]] = []
    for r in p.spec.get("rules") or []:
        ops = r.get("to")
        rule: dict[str, Any] = {"sources": [_source(s) for s in r.get("from") or []]}
        if ops is not None:
            kept = [_operation(o) for o in ops if o.get("ports") is None or port in o["ports"]]
            if not kept:
                continue  # every operation is for another port: the rule never matches here
            rule["operations"] = kept
        rules.append(rule)
    return msgspec.convert({"name": f"{p.namespace}/{p.name}",
                            "action": p.spec.get("action") or "ALLOW",
                            "dry_run": bool(p.spec.get("dryRun")), "rules": rules}, AuthzPolicy)


def _workloads(mesh: MeshModel, p: Policy, members: dict[Key, set[Key]]) -> set[Key] | None:
    """The workloads `p` applies to; None when its target does not exist."""
    if p.target_kind == "Mesh":
        return {x.key for x in mesh.proxies} if p.target_found else None
    if p.target_kind == "Namespace":
        if p.target_name != p.namespace:
            return None
        return {x.key for x in mesh.proxies if x.namespace == p.namespace}
    if not p.target_found:
        return None
    return members.get((p.namespace, p.target_name), set())


def apply(mesh: MeshModel) -> MeshModel:
    policies = [p for p in mesh.policies if p.kind == KIND]
    if not policies:
        return mesh
    members: dict[Key, set[Key]] = {}
    for sp in mesh.services:
        for e in sp.endpoints:
            if e.metadata.workload:
                members.setdefault(sp.key, set()).add((e.metadata.namespace, e.metadata.workload))
    mtls = mtls_enforced(mesh)
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    applies: dict[Key, list[Policy]] = {}
    for written in policies:
        gen = written.generation
        p, resolved = authz_labels.resolve(written, mesh.proxies)
        workloads = _workloads(mesh, p, members)
        if workloads is None:
            target = (f"namespace {p.target_name} is not the policy's own ({p.namespace})"
                      if p.target_kind == "Namespace" else
                      f"target {p.target_kind} {p.namespace}/{p.target_name} does not exist")
            conditions[p.ref] = (Condition("Accepted", False, "TargetNotFound", target, gen),)
            continue
        for k in workloads:
            applies.setdefault(k, []).append(p)
        mode = " (dry run: counted and logged, nothing refused)" if p.spec.get("dryRun") else ""
        conds = [Condition("Accepted", True, "Enforced",
                           f"enforced on the inbound ports of {len(workloads)} workload(s){mode}",
                           gen)]
        if _uses_identities(p.spec) and not mtls:
            conds.append(Condition(
                "IdentitiesVerified", False, "MTLSNotEnforced",
                "rules match callers by identity (identities, namespaces, serviceAccounts, "
                "workloadLabels), "
                "but the Mesh's mTLS is not STRICT and in force: a plaintext caller has no "
                "identity, so those rules never match it", gen))
        conditions[p.ref] = (*conds, *resolved)

    def bind(proxy: Proxy) -> Proxy:
        mine = applies.get(proxy.key)
        if not mine:
            return proxy
        return replace(proxy, authz=tuple(
            InboundAuthz(ip.port, tuple(for_port(p, ip.port) for p in mine))
            for ip in proxy.inbound))

    return replace(mesh, proxies=tuple(bind(x) for x in mesh.proxies), conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("proxies", "conditions"))
