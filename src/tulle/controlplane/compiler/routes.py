"""HTTPRoute and GRPCRoute with a Service parent (GAMMA) -> the model's routes (and TCPRoutes
-> the Service ports they attach to and their weighted backends, which transparent clients run:
`transparent.py`).

A route attached to a Service replaces the Service's default rule for the parent's port (or all
its ports when the parentRef names none).  Several routes on one Service are merged; the router
orders matches by Gateway API precedence.  This module reads what every route has — parents,
matches, backends — and lists each rule's filters by type; the filters' settings and the rules'
timeouts are configured by their plugins (`compiler/plugins/`), and a rule with a filter no
plugin runs is left out.  What the data plane cannot do yet is never dropped silently: the
route records what was left out and why (`Route.dropped`, the problems), and its `Accepted` /
`ResolvedRefs` / `PartiallyInvalid` conditions (`status.py`) say so; the rest of the mesh
compiles regardless.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, spec_of
from tulle.controlplane.compiler.ir import (
    INVALID_BACKEND,
    Backend,
    Dropped,
    Grant,
    Route,
    Rule,
    RuleFilter,
    ServicePort,
    TCPParent,
    TCPRoute,
    cluster_name,
)
from tulle.controlplane.compiler.matches import MatchCompiler, grpc_matches, http_matches


def _parent_ports(ref: dict[str, Any], ports: dict[int, ServicePort]) -> list[int]:
    port = ref.get("port")
    return sorted(ports) if port is None else ([int(port)] if int(port) in ports else [])


SERVICE_GROUPS = ("", "core")
GATEWAY_GROUP = "gateway.networking.k8s.io"


def granted(m: MeshInputs, kind: str, from_ns: str, to: Key) -> bool:
    """Whether a ReferenceGrant in `to`'s namespace lets routes of `kind` in `from_ns` name the
    Service `to` (Gateway API: a grant lists the routes it admits by group, kind and namespace,
    and the Services by kind and, optionally, name)."""
    for (gns, _), grant in m.reference_grants.items():
        if gns != to[0]:
            continue
        spec = spec_of(grant)
        if not any(f.get("group") == GATEWAY_GROUP and f.get("kind") == kind
                   and f.get("namespace") == from_ns for f in spec.get("from") or []):
            continue
        if any(t.get("group", "") in SERVICE_GROUPS and t.get("kind") == "Service"
               and t.get("name") in (None, "", to[1]) for t in spec.get("to") or []):
            return True
    return False


def derive_grants(m: MeshInputs) -> tuple[Grant, ...]:
    """Every (route kind, from namespace) -> (namespace, Service) permission of the
    ReferenceGrants, flattened and sorted (the same reading as `granted`)."""
    out: set[Grant] = set()
    for (gns, _), grant in m.reference_grants.items():
        spec = spec_of(grant)
        tos = [str(t.get("name") or "") for t in spec.get("to") or []
               if t.get("group", "") in SERVICE_GROUPS and t.get("kind") == "Service"]
        for f in spec.get("from") or []:
            if f.get("group") == GATEWAY_GROUP and f.get("kind") and f.get("namespace"):
                out.update(Grant(str(f["kind"]), str(f["namespace"]), gns, t) for t in tos)
    return tuple(sorted(out, key=lambda g: (g.to_ns, g.to_name, g.from_kind, g.from_ns)))


class _Refs:
    """What one route's backendRefs resolve to, and what did not resolve and why."""

    def __init__(self, m: MeshInputs, kind: str, ns: str,
                 svc_ports: dict[Key, dict[int, ServicePort]]) -> None:
        self.m = m
        self.kind = kind
        self.ns = ns
        self.svc_ports = svc_ports
        self.problems: list[str] = []
        self.reason = "BackendNotFound"

    def backends(self, refs: list[dict[str, Any]], default_port: int) -> list[Backend]:
        """One backend per ref, with its weight.  A ref that does not resolve keeps its weight
        on `INVALID_BACKEND`, which answers 500: its share of the traffic, and only its share,
        fails (Gateway API), rather than moving to the other backends."""
        out = []
        for ref in refs:
            weight = int(ref.get("weight", 1))
            cluster = self._resolve(ref, default_port)
            out.append(Backend(cluster or INVALID_BACKEND, weight))
        return out

    def _resolve(self, ref: dict[str, Any], default_port: int) -> str | None:
        if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in SERVICE_GROUPS:
            self.problems.append(f"backendRef {ref.get('name')}: only Service backends are "
                                 "supported")
            if self.reason == "BackendNotFound":
                self.reason = "InvalidKind"
            return None
        key = (ref.get("namespace") or self.ns, ref["name"])
        if key[0] != self.ns and not granted(self.m, self.kind, self.ns, key):
            self.problems.append(f"backendRef {key[0]}/{key[1]}: no ReferenceGrant in "
                                 f"namespace {key[0]} allows it")
            self.reason = "RefNotPermitted"
            return None
        port = int(ref.get("port") or default_port)
        sp = self.svc_ports.get(key, {}).get(port)
        if sp is None:
            self.problems.append(f"backendRef {key[0]}/{key[1]}:{port} does not exist")
            return None
        return sp.cluster_name


def _rule_names(kind: str, ns: str, name: str, rules: list[dict[str, Any]]) -> list[str]:
    """The names the proxy reports each rule's traffic under (its route metrics):
    `<kind>/<ns>/<route>/<rule name>` for a named rule (`rules[].name`), else its index, unless
    another rule took that as its name."""
    named = {str(r["name"]) for r in rules if r.get("name")}
    out = []
    for i, r in enumerate(rules):
        own = str(r["name"]) if r.get("name") else (str(i) if str(i) not in named else f"#{i}")
        out.append(f"{kind.lower()}/{ns}/{name}/{own}")
    return out


def _route(m: MeshInputs, kind: str, key: Key, route: Resource,
           ports_of: dict[Key, dict[int, ServicePort]], matcher: MatchCompiler) -> Route:
    ns, name = key
    spec = spec_of(route)
    meta = route.get("metadata") or {}
    gen = int(meta.get("generation") or 1)
    parent_problems: list[str] = []
    attached: list[tuple[Key, int]] = []
    for ref in spec.get("parentRefs") or []:
        if ref.get("kind", "Service") != "Service":
            parent_problems.append(f"parentRef {ref.get('name')}: only Service parents (GAMMA) "
                                   "are supported")
            continue
        pkey = (ref.get("namespace") or ns, ref["name"])
        ports = ports_of.get(pkey)
        if ports is None:
            parent_problems.append(f"parent Service {pkey[0]}/{pkey[1]} does not exist")
            continue
        found = _parent_ports(ref, ports)
        if not found:
            parent_problems.append(f"parent Service {pkey[0]}/{pkey[1]} has no port "
                                   f"{ref.get('port')}")
        attached += [(pkey, p) for p in found if (pkey, p) not in attached]
    refs = _Refs(m, kind, ns, ports_of)
    problems: list[str] = []
    rules: list[Rule] = []
    default_port = attached[0][1] if attached else 0
    user_rules = spec.get("rules") or [{}]
    for i, (rule, rule_name) in enumerate(zip(user_rules, _rule_names(kind, ns, name, user_rules),
                                              strict=True)):
        backends = refs.backends(rule.get("backendRefs") or [], default_port)
        matches = matcher(rule.get("matches") or [], f"rules[{i}]", problems)
        # Filters are configured by their plugins; one that no plugin runs leaves the rule out.
        filters = tuple(RuleFilter(j, str(f.get("type")))
                        for j, f in enumerate(rule.get("filters") or []))
        if not any(b.weight for b in backends):
            # No backend may take traffic (none is written, or every weight is 0): the rule
            # answers 500, per Gateway API (and the proxy refuses a rule of zero weights).
            backends = [Backend(INVALID_BACKEND)]
        rules.append(Rule(
            name=rule_name, index=i, matches=matches, backends=tuple(backends),
            spec=rule, filters=filters,
            # No match the proxy can run as written: the rule stays in the model (plugins
            # still report on its settings) but is not rendered.
            left_out=not matches))
    return Route(kind=kind, namespace=ns, name=name, generation=gen, parents=tuple(attached),
                 created=str(meta.get("creationTimestamp") or ""),
                 rules=tuple(rules), parent_problems=tuple(parent_problems),
                 ref_problems=tuple(refs.problems), ref_reason=refs.reason,
                 dropped=tuple(Dropped(p, "invalid") for p in problems))


def _ports_of(m: MeshInputs, services: tuple[ServicePort, ...]) -> dict[Key, dict[int, ServicePort]]:
    ports_of: dict[Key, dict[int, ServicePort]] = {k: {} for k in m.services}
    for sp in services:
        ports_of[sp.key][sp.port] = sp
    return ports_of


def _tcp_route(m: MeshInputs, key: Key, route: Resource,
               ports_of: dict[Key, dict[int, ServicePort]]) -> TCPRoute:
    ns, name = key
    spec = spec_of(route)
    parents: list[TCPParent] = []
    for i, ref in enumerate(spec.get("parentRefs") or []):
        pkey = (ref.get("namespace") or ns, str(ref.get("name")))
        label = f"Service {pkey[0]}/{pkey[1]}" + (f":{ref['port']}" if ref.get("port") else "")
        problem = ""
        targets: tuple[tuple[Key, int], ...] = ()
        if ref.get("kind", "Service") != "Service":
            problem = "only Service parents (GAMMA) are supported"
        elif pkey not in ports_of:
            problem = f"parent Service {pkey[0]}/{pkey[1]} does not exist"
        elif not _parent_ports(ref, ports_of[pkey]):
            problem = f"parent Service {pkey[0]}/{pkey[1]} has no port {ref.get('port')}"
        else:
            targets = tuple((pkey, p) for p in _parent_ports(ref, ports_of[pkey]))
        parents.append(TCPParent(i, label, problem, targets))
    refs = _Refs(m, "TCPRoute", ns, ports_of)
    backends: list[Backend] = []
    for rule in spec.get("rules") or []:
        backends += refs.backends(rule.get("backendRefs") or [], 0)
    meta = route.get("metadata") or {}
    return TCPRoute(namespace=ns, name=name, generation=int(meta.get("generation") or 1),
                    parents=tuple(parents), ref_problems=tuple(refs.problems),
                    ref_reason=refs.reason, backends=tuple(backends),
                    created=str(meta.get("creationTimestamp") or ""))


def derive_tcp_routes(m: MeshInputs, services: tuple[ServicePort, ...]) -> tuple[TCPRoute, ...]:
    """Every TCPRoute, sorted by key, with which of its parents and backends resolve."""
    ports_of = _ports_of(m, services)
    return tuple(_tcp_route(m, key, m.tcp_routes[key], ports_of) for key in sorted(m.tcp_routes))


def derive_routes(m: MeshInputs, services: tuple[ServicePort, ...]) -> tuple[Route, ...]:
    """Every HTTPRoute, then every GRPCRoute, each sorted by key, with what it attaches to."""
    ports_of = _ports_of(m, services)
    out: list[Route] = []
    for kind, routes, matcher in (("HTTPRoute", m.http_routes, http_matches),
                                  ("GRPCRoute", m.grpc_routes, grpc_matches)):
        out.extend(_route(m, kind, key, routes[key], ports_of, matcher) for key in sorted(routes))
    return tuple(out)


__all__ = ["cluster_name", "derive_routes", "derive_tcp_routes"]
