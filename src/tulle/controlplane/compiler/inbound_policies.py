"""Server-side policy kinds (ADR 0041): which policies reach which workload port, merged by
ADR 0037's precedence, and the status each gets.

`FaultInjectionPolicy` and `RateLimitPolicy` are enforced by the *called* workloads' proxies,
on their inbound ports.  For one inbound port of one workload:

* the **port scope** (every request on the port) merges, field by field, most specific first:
  policies targeting a Service the port serves (a Service port whose endpoint is this
  workload's port), the workload's namespace (`Namespace` named like the policy's own), the
  Mesh;
* a **rule scope** for each rule of a route attached to such a Service that a policy targets
  (`sectionName` = the rule's name, or the whole route): the rule's own policies, then the
  route's, then the port scope's layers.  The proxy tells the rule's requests apart by the
  rule's matches (path, headers, query, method: what the caller's proxy routed on; a
  URLRewrite on the caller's side changes the path first).  A rule whose matches cannot be run
  is left out (its requests take the port scope).

At one level the policies come in (namespace, name) order and the first that sets a field wins
it; a later one that also set it is reported `Conflicted` in its status (ADR 0037).  Each value
is kept with its source (`source_of`), which the Services' conditions show (`describe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tulle.controlplane.compiler.ir import Condition, Key, MeshModel, ObjectRef, Policy, Proxy
from tulle.proxyconfig.model import RouteMatch

BUILTIN_SOURCE = "default"

Merged = dict[str, tuple[Any, str]]
"""field -> (value, source) for the fields some layer set."""


def source_of(p: Policy) -> str:
    return f"{p.kind} {p.namespace}/{p.name}"


@dataclass
class Tally:
    """What the policies of one kind did, for their conditions."""

    workloads: dict[ObjectRef, set[Key]] = field(default_factory=dict)
    won: dict[ObjectRef, set[str]] = field(default_factory=dict)
    conflicts: dict[ObjectRef, set[str]] = field(default_factory=dict)
    missing_rule: dict[ObjectRef, str] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    """Source (`source_of`) -> why a merged value of it could not become the proxy's config
    (its scope is then left without the filter; never seen from a validated spec)."""

    def refuse(self, merged: Merged, why: str) -> None:
        for _, source in merged.values():
            self.invalid.setdefault(source, why)


def merge(levels: Sequence[Sequence[Policy]], fields: Sequence[str], tally: Tally,
          workload: Key) -> Merged:
    """The first policy (most specific level first) that sets each field wins it."""
    out: Merged = {}
    for level in levels:
        for f in fields:
            setters = [p for p in level if p.spec.get(f) is not None]
            if not setters or f in out:
                for p in setters:
                    tally.workloads.setdefault(p.ref, set()).add(workload)
                continue
            winner = setters[0]
            out[f] = (winner.spec[f], source_of(winner))
            tally.won.setdefault(winner.ref, set()).add(f)
            for p in setters:
                tally.workloads.setdefault(p.ref, set()).add(workload)
            for loser in setters[1:]:
                tally.conflicts.setdefault(loser.ref, set()).add(f"{f} (to {source_of(winner)})")
    return out


@dataclass(frozen=True)
class Scope:
    port: int
    name: str
    """"" the whole port; else the route rule's name (`<kind>/<ns>/<route>/<rule>`)."""
    matches: tuple[RouteMatch, ...]
    merged: Merged
    services: tuple[Key, ...]
    """The Services the port serves (the global limit's key names them)."""
    route_sources: frozenset[str] = frozenset()
    """Sources of the route-level policies of a rule scope: a value one of them set is the
    rule's own (a global limit of its own); any other is the port's, shared with it."""


def _serves(mesh: MeshModel) -> dict[tuple[Key, int], set[Key]]:
    """(workload, inbound port) -> the Services that have it as an endpoint."""
    by_port: dict[tuple[Key, int], set[Key]] = {}
    for sp in mesh.services:
        for e in sp.members:  # (out by readiness too: its own side, ADR 0116)
            if e.metadata.workload:
                wk = (e.metadata.namespace, e.metadata.workload)
                by_port.setdefault((wk, e.port), set()).add(sp.key)
    return by_port


@dataclass
class Levels:
    """The policies of one kind by the level they target (ADR 0037)."""

    by_service: dict[Key, list[Policy]] = field(default_factory=dict)
    by_route: dict[ObjectRef, list[Policy]] = field(default_factory=dict)
    by_namespace: dict[str, list[Policy]] = field(default_factory=dict)
    mesh: list[Policy] = field(default_factory=list)

    def base(self, services: Sequence[Key], namespace: str) -> list[Sequence[Policy]]:
        return [[p for s in services for p in self.by_service.get(s, [])],
                self.by_namespace.get(namespace, []), self.mesh]


def levels(mesh: MeshModel, kind: str) -> Levels:
    out = Levels()
    for p in mesh.policies:
        if p.kind != kind:
            continue
        if p.target_kind == "Service" and p.target_found:
            out.by_service.setdefault((p.namespace, p.target_name), []).append(p)
        elif p.target_kind in ("HTTPRoute", "GRPCRoute") and p.target_found:
            out.by_route.setdefault((p.target_kind, p.namespace, p.target_name), []).append(p)
        elif p.target_kind == "Namespace" and p.target_name == p.namespace:
            out.by_namespace.setdefault(p.namespace, []).append(p)
        elif p.target_kind == "Mesh" and p.target_found:
            out.mesh.append(p)
    return out


def scopes(mesh: MeshModel, kind: str, fields: Sequence[str], tally: Tally
           ) -> dict[Key, list[Scope]]:
    """Per workload, the scopes of its inbound ports where a policy of `kind` applies."""
    if not any(p.kind == kind for p in mesh.policies):
        return {}
    serves = _serves(mesh)
    lv = levels(mesh, kind)
    by_route = lv.by_route
    routes_of: dict[Key, list[Any]] = {}
    for r in mesh.routes:
        if (r.kind, r.namespace, r.name) not in by_route:
            continue
        rule_names = {rule.spec.get("name") for rule in r.rules}
        for p in by_route[(r.kind, r.namespace, r.name)]:
            section = (p.spec.get("targetRef") or {}).get("sectionName")
            if section is not None and section not in rule_names:
                tally.missing_rule[p.ref] = (f"{r.kind} {r.namespace}/{r.name} has no rule "
                                             f"named {section!r}")
        for svc, _port in r.parents:
            routes_of.setdefault(svc, []).append(r)
    out: dict[Key, list[Scope]] = {}
    for proxy in mesh.proxies:
        found: list[Scope] = []
        for ip in proxy.inbound:
            services = tuple(sorted(serves.get((proxy.key, ip.port), set())))
            base = lv.base(services, proxy.key[0])
            if any(base):
                found.append(Scope(ip.port, "", (), merge(base, fields, tally, proxy.key),
                                   services))
            seen: set[ObjectRef] = set()
            for s in services:
                for r in routes_of.get(s, []):
                    if r.ref in seen:
                        continue
                    seen.add(r.ref)
                    found += _rule_scopes(r, by_route[(r.kind, r.namespace, r.name)], base,
                                          fields, tally, proxy, ip.port, services)
        if found:
            out[proxy.key] = found
    return out


def _rule_scopes(route: Any, policies: list[Policy], base: list[Sequence[Policy]],
                 fields: Sequence[str], tally: Tally, proxy: Proxy, port: int,
                 services: tuple[Key, ...]) -> list[Scope]:
    out: list[Scope] = []
    whole = [p for p in policies if (p.spec.get("targetRef") or {}).get("sectionName") is None]
    for rule in route.rules:
        user_name = rule.spec.get("name")
        own = [p for p in policies
               if user_name and (p.spec.get("targetRef") or {}).get("sectionName") == user_name]
        if not own and not whole:
            continue
        if rule.left_out or not rule.matches:
            continue  # its requests cannot be told apart: they take the port scope
        out.append(Scope(port, rule.name, tuple(rule.matches),
                         merge([own, whole, *base], fields, tally, proxy.key), services,
                         frozenset(source_of(p) for p in own + whole)))
    return out


def conditions(mesh: MeshModel, kind: str, tally: Tally,
               extra: Mapping[ObjectRef, str] | None = None) -> dict[ObjectRef, tuple[Condition, ...]]:
    """Each policy of `kind`'s status: TargetNotFound, Enforced (how many workloads), or
    Overridden; `Conflicted` fields named."""
    out: dict[ObjectRef, tuple[Condition, ...]] = {}
    for p in mesh.policies:
        if p.kind != kind:
            continue
        gen = p.generation
        if p.target_kind == "Namespace" and p.target_name != p.namespace:
            out[p.ref] = (Condition("Accepted", False, "TargetNotFound",
                                    f"namespace {p.target_name} is not the policy's own "
                                    f"({p.namespace})", gen),)
            continue
        if not p.target_found and p.target_kind != "Namespace":
            out[p.ref] = (Condition("Accepted", False, "TargetNotFound",
                                    f"target {p.target_kind} {p.namespace}/{p.target_name} "
                                    "does not exist", gen),)
            continue
        if source_of(p) in tally.invalid:
            out[p.ref] = (Condition("Accepted", False, "Invalid",
                                    f"not compiled: {tally.invalid[source_of(p)]}", gen),)
            continue
        if p.ref in tally.missing_rule:
            out[p.ref] = (Condition("Accepted", False, "TargetNotFound",
                                    tally.missing_rule[p.ref], gen),)
            continue
        n = len(tally.workloads.get(p.ref, set()))
        won = sorted(tally.won.get(p.ref, set()))
        lost = sorted(tally.conflicts.get(p.ref, set()))
        note = (extra or {}).get(p.ref, "")
        if n and won:
            msg = (f"enforced on the inbound side of {n} workload(s): sets {', '.join(won)}"
                   + (f"; conflicted, lost {', '.join(lost)}" if lost else "") + note)
            out[p.ref] = (Condition("Accepted", True, "Conflicted" if lost else "Enforced",
                                    msg, gen),)
        elif n:
            msg = ("every field it sets is set by a more specific or older policy"
                   + (f" (lost {', '.join(lost)})" if lost else ""))
            out[p.ref] = (Condition("Accepted", True, "Conflicted" if lost else "Overridden",
                                    msg, gen),)
        else:
            out[p.ref] = (Condition("Accepted", True, "Enforced",
                                    "applies to no workload port yet", gen),)
    return out


def describe(merged: Merged, fields: Sequence[str], render: Mapping[str, Any]) -> str:
    """`field=value (source); ...` for a Service's condition, built-in defaults included."""
    parts = []
    for f in fields:
        if f in merged:
            value, src = merged[f]
            parts.append(f"{f}={render[f](value)} ({src})")
        else:
            parts.append(f"{f}=none ({BUILTIN_SOURCE})")
    return "; ".join(parts)


def add_filters(proxy: Proxy, http: Sequence[tuple[Scope, Any]],
                network: Sequence[tuple[int, Any]]) -> Proxy:
    """`proxy` with `http` (scope, HTTP filter config) and `network` (port, network filter
    config) added to its inbound rules: one `InboundRule` per (port, scope), filters of every
    server-side plugin together."""
    from msgspec.structs import replace

    from tulle.controlplane.compiler.ir import InboundNetwork, InboundRule

    rules = {(r.port, r.scope): r for r in proxy.inbound_rules}
    for scope, cfg in http:
        old = rules.get((scope.port, scope.name))
        rules[(scope.port, scope.name)] = InboundRule(
            scope.port, scope.name, scope.matches, (*(old.filters if old else ()), cfg))
    nets = {n.port: n for n in proxy.inbound_network}
    for port, cfg in network:
        prev = nets.get(port)
        nets[port] = InboundNetwork(port, (*(prev.filters if prev else ()), cfg))
    return replace(proxy, inbound_rules=tuple(rules[k] for k in sorted(rules)),
                   inbound_network=tuple(nets[k] for k in sorted(nets)))


def service_conditions(mesh: MeshModel, kind: str, fields: Sequence[str], ctype: str,
                       render: Mapping[str, Any]) -> dict[ObjectRef, tuple[Condition, ...]]:
    """Every Service's condition `ctype`: the port-scope values its workloads enforce and who
    set each (built-in defaults included, so a deleted policy's name never lingers)."""
    lv = levels(mesh, kind)
    out = dict(mesh.conditions)
    seen: set[Key] = set()
    for sp in mesh.services:
        if sp.key in seen:
            continue
        seen.add(sp.key)
        merged = merge(lv.base([sp.key], sp.key[0]), fields, Tally(), ("", ""))
        ref = ("Service", sp.key[0], sp.key[1])
        gen = int(getattr(sp, "generation", 1))  # ServicePort.generation where the model has it
        out[ref] = (*out.get(ref, ()), Condition(ctype, True, "Resolved",
                                                 describe(merged, fields, render), gen))
    return out
