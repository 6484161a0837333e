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

A Service-targeted policy is bound, on its endpoints' workloads, to the inbound ports that
Service names and to the ports no Service names (reached only by the pod's address), never to
a port another Service names: a workload behind two Services keeps the other Service's port
free of it, and a port nobody exposes stays covered as before (ADR 0087).

Status: `Accepted=True` naming how many inbound ports of how many workloads enforce it,
`TargetNotFound` otherwise.  Problems that leave rules unable to match anything become
conditions with status False, so `apply` warns and `get`/`describe` show them:
- `IdentitiesVerified=False` (`MTLSNotEnforced`): the rules use identities (`identities`,
  `namespaces`, `serviceAccounts`, `workloadLabels`) and some port the policy is bound to is
  not STRICT (the mesh-wide mode, or a Service's or a port's `MutualTLSPolicy`): a plaintext
  caller there has no identity, so those rules never match it.
- `RulesMatchable=False` (`ForeignTrustDomain`): an identity names another trust domain than
  the mesh's; no workload certificate carries it.
- `RulesMatchable=False` (`NoSuchPort`): a `to.ports` entry is no inbound port of any workload
  the policy is bound to (a Service's port given for its workloads' port, say); those
  operations never match.
- `SourceFamiliesCovered=False` (`IPBlocksOneFamily`): a `from` entry's `ipBlocks` name one
  IP version while a workload the policy is bound to takes the other too (a transparent
  sidecar listens on both, ADR 0088): a caller of that version -- the same host by its other
  address -- is never matched by them (a DENY's bypass, an ALLOW's refusal).
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
from tulle.proxyconfig.address import matched_network
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


def _split_domain(identity: str) -> tuple[str, str] | None:
    """(trust domain, path) of a SPIFFE ID or of a prefix that names its whole trust domain;
    None for `*` and prefixes that stop inside the trust domain (they match any)."""
    if not identity.startswith("spiffe://"):
        return None
    td, slash, path = identity[len("spiffe://"):].partition("/")
    return (td, path) if slash else None


def _aliased(identities: list[str], tds: tuple[str, ...]) -> list[str]:
    """`identities`, each one naming a trust domain of `tds` also in the others (a certificate
    still naming an alias is the same workload, `Mesh.spec.trustDomainAliases`)."""
    out: list[str] = []
    for ident in identities:
        out.append(ident)
        split = _split_domain(ident)
        if split is not None and split[0] in tds:
            out += [f"spiffe://{other}/{split[1]}" for other in tds if other != split[0]]
    return list(dict.fromkeys(out))


def _source(s: Mapping[str, Any], tds: tuple[str, ...]) -> dict[str, Any]:
    out = {"principals": _aliased(s.get("identities") or [], tds),
           "namespaces": s.get("namespaces") or [],
           "service_accounts": s.get("serviceAccounts") or [],
           "ip_blocks": s.get("ipBlocks") or []}
    if tds and (out["namespaces"] or out["service_accounts"]):
        # Namespaces and accounts of this mesh's trust domain and its aliases only (ADR 0096).
        out["trust_domains"] = list(tds)
    return out


def _operation(o: Mapping[str, Any]) -> dict[str, Any]:
    methods = o.get("methods") or []
    return {"paths": o.get("paths") or [], "methods": [] if "*" in methods else methods,
            "headers": [{"name": h["name"], "values": h["values"]} for h in o.get("headers") or []]}


def _for_port(o: Mapping[str, Any], port: int) -> bool:
    return o.get("ports") is None or port in o["ports"]


def rules_on_port(spec: Mapping[str, Any], port: int) -> list[int]:
    """The positions (as written) of the rules a policy keeps on inbound port `port`: a rule
    whose every operation names other ports never matches there and is left out.  `tulle
    explain` maps a compiled rule back to the written one with it."""
    return [i for i, r in enumerate(spec.get("rules") or [])
            if r.get("to") is None or any(_for_port(o, port) for o in r["to"])]


def for_port(p: Policy, port: int, tds: tuple[str, ...] = ()) -> AuthzPolicy:
    """The contract policy of `p` on inbound port `port` (ports resolved; identities in every
    trust domain of `tds`)."""
    rules: list[dict[str, Any]] = []
    written = p.spec.get("rules") or []
    for i in rules_on_port(p.spec, port):
        r = written[i]
        ops = r.get("to")
        rule: dict[str, Any] = {"sources": [_source(s, tds) for s in r.get("from") or []]}
        if ops is not None:
            rule["operations"] = [_operation(o) for o in ops if _for_port(o, port)]
        rules.append(rule)
    return msgspec.convert({"name": f"{p.namespace}/{p.name}",
                            "action": p.spec.get("action") or "ALLOW",
                            "dry_run": bool(p.spec.get("dryRun")), "rules": rules}, AuthzPolicy)


def _foreign(spec: Mapping[str, Any], tds: tuple[str, ...]) -> list[str]:
    """The identities of `spec` that name a trust domain the mesh does not accept (`*` and
    prefixes that stop inside the trust domain match any)."""
    return [ident for r in spec.get("rules") or [] for src in r.get("from") or []
            for ident in src.get("identities") or []
            if (split := _split_domain(ident)) is not None and split[0] not in tds]


def _ports_named(spec: Mapping[str, Any]) -> set[int]:
    return {int(port) for r in spec.get("rules") or [] for o in r.get("to") or []
            for port in o.get("ports") or []}


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


def _families(mesh: MeshModel, keys: set[Key]) -> dict[int, list[str]]:
    """IP version -> the bound workloads (by name) a caller of that version can reach: a
    transparent sidecar listens on both families (ADR 0088); an explicit proxy on its address;
    a node agent steers IPv4 only and refuses its pods' IPv6 (ADR 0050)."""
    out: dict[int, list[str]] = {}
    for x in mesh.proxies:
        if x.key not in keys:
            continue
        versions = {6 if ":" in x.address else 4}
        if x.interception == "transparent":
            versions = {4, 6}
        for v in sorted(versions):
            out.setdefault(v, []).append(f"{x.namespace}/{x.name}")
    return out


def _version(block: str) -> int:
    """The IP version a block matches peers of (an IPv4-mapped range matches IPv4 ones)."""
    try:
        return matched_network(block).version
    except ValueError:  # refused by the API; stored before that, it matches no one
        return 6 if ":" in block else 4


def _ip_block_gaps(spec: Mapping[str, Any], reached: dict[int, list[str]]) -> list[str]:
    """Each `from` entry whose `ipBlocks` name one IP version while the workloads bound take
    the other too."""
    out: list[str] = []
    for i, rule in enumerate(spec.get("rules") or []):
        for j, src in enumerate((rule or {}).get("from") or []):
            blocks = (src or {}).get("ipBlocks") or []
            if not blocks:
                continue
            have = {_version(str(b)) for b in blocks}
            for v in sorted(set(reached) - have):
                who = reached[v]
                out.append(f"rules[{i}].from[{j}].ipBlocks name IPv{4 if v == 6 else 6} only, "
                           f"while {', '.join(who[:3])}{', ...' if len(who) > 3 else ''} "
                           f"take IPv{v}")
    return out


def apply(mesh: MeshModel) -> MeshModel:
    policies = [p for p in mesh.policies if p.kind == KIND]
    if not policies:
        return mesh
    members: dict[Key, set[Key]] = {}
    service_ports: dict[tuple[Key, Key], set[int]] = {}
    """(Service, workload) -> the workload's inbound ports the Service's endpoints name."""
    exposed: dict[Key, set[int]] = {}
    """Workload -> its inbound ports some Service names."""
    for sp in mesh.services:
        for e in sp.members:  # (out by readiness too: its own side, ADR 0116)
            if e.metadata.workload:
                wkey = (e.metadata.namespace, e.metadata.workload)
                members.setdefault(sp.key, set()).add(wkey)
                service_ports.setdefault((sp.key, wkey), set()).add(e.port)
                exposed.setdefault(wkey, set()).add(e.port)
    inbound_of = {x.key: tuple(ip.port for ip in x.inbound) for x in mesh.proxies}
    enforced = mtls_enforced(mesh)
    port_modes, unreached_mode = mtls.inbound_modes(mesh)
    tds = mtls.trust_domains(mesh)
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    bound: dict[tuple[Key, int], list[Policy]] = {}
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
        ports: list[tuple[Key, int]] = []
        for k in sorted(workloads):
            mine = inbound_of.get(k, ())
            if p.target_kind == "Service":  # not another Service's ports (ADR 0087)
                own = service_ports.get(((p.namespace, p.target_name), k), set())
                others = exposed.get(k, set())
                mine = tuple(port for port in mine if port in own or port not in others)
            ports += [(k, port) for port in mine]
        for kp in ports:
            bound.setdefault(kp, []).append(p)
        mode = " (dry run: counted and logged, nothing refused)" if p.spec.get("dryRun") else ""
        conds = [Condition("Accepted", True, "Enforced",
                           f"enforced on {len(ports)} inbound port(s) of {len(workloads)} "
                           f"workload(s){mode}", gen)]
        if _uses_identities(p.spec):
            weak = [f"{k[0]}/{k[1]}:{port} {port_modes.get((k, port), unreached_mode)}"
                    for k, port in ports
                    if not enforced or port_modes.get((k, port), unreached_mode) != "STRICT"]
            if weak or (not ports and not enforced):
                where = (f"on {len(weak)} of its {len(ports)} port(s) mTLS is not STRICT "
                         f"({', '.join(weak[:3])}{', ...' if len(weak) > 3 else ''})"
                         if enforced else "the Mesh's mTLS is not STRICT and in force")
                conds.append(Condition(
                    "IdentitiesVerified", False, "MTLSNotEnforced",
                    "rules match callers by identity (identities, namespaces, serviceAccounts, "
                    f"workloadLabels), but {where}: a plaintext caller has no identity, so "
                    "those rules never match it", gen))
        foreign = _foreign(p.spec, tds)
        if foreign:
            conds.append(Condition(
                "RulesMatchable", False, "ForeignTrustDomain",
                f"identities {', '.join(sorted(set(foreign))[:3])} are not of the mesh's trust "
                f"domain {tds[0]} (nor of trustDomainAliases): no workload certificate carries "
                "them, so those rules never match", gen))
        named = _ports_named(p.spec)
        have = {port for _, port in ports}
        missing = sorted(named - have)
        if missing and ports:
            conds.append(Condition(
                "RulesMatchable", False, "NoSuchPort",
                f"to.ports {missing} are no inbound port of the workloads it is bound to "
                f"(their ports: {sorted(have)}; a Service's port is not its workloads' port): "
                "those operations never match", gen))
        gaps = _ip_block_gaps(p.spec, _families(mesh, {k for k, _ in ports}))
        if gaps:
            conds.append(Condition(
                "SourceFamiliesCovered", False, "IPBlocksOneFamily",
                f"{'; '.join(gaps[:3])}{'; ...' if len(gaps) > 3 else ''}: a caller of the "
                "other family (the same host by its other address, or an IPv6 link-local one) "
                "is never matched by those blocks, so a DENY does not refuse it and an ALLOW "
                "does not admit it; list the callers' ranges of both families (ADR 0088)", gen))
        conditions[p.ref] = (*conds, *resolved)

    def bind(proxy: Proxy) -> Proxy:
        if not any((proxy.key, ip.port) in bound for ip in proxy.inbound):
            return proxy
        return replace(proxy, authz=tuple(
            InboundAuthz(ip.port, tuple(for_port(p, ip.port, tds)
                                        for p in bound.get((proxy.key, ip.port), ())))
            for ip in proxy.inbound if (proxy.key, ip.port) in bound))

    return replace(mesh, proxies=tuple(bind(x) for x in mesh.proxies), conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("proxies", "conditions"))
