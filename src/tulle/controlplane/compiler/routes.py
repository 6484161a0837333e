"""HTTPRoute and GRPCRoute with a Service parent (GAMMA) -> the model's routes.

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

from collections.abc import Callable
from typing import Any

from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, spec_of
from tulle.controlplane.compiler.ir import (
    Backend,
    Dropped,
    PathMatch,
    Route,
    Rule,
    RuleFilter,
    ServicePort,
    cluster_name,
)


def _parent_ports(ref: dict[str, Any], ports: dict[int, ServicePort]) -> list[int]:
    port = ref.get("port")
    return sorted(ports) if port is None else ([int(port)] if int(port) in ports else [])


def _backends(ns: str, refs: list[dict[str, Any]], svc_ports: dict[Key, dict[int, ServicePort]],
              problems: list[str], default_port: int) -> list[Backend]:
    out = []
    for ref in refs:
        if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
            problems.append(f"backendRef {ref.get('name')}: only Service backends are supported")
            continue
        key = (ref.get("namespace") or ns, ref["name"])
        port = int(ref.get("port") or default_port)
        sp = svc_ports.get(key, {}).get(port)
        if sp is None:
            problems.append(f"backendRef {key[0]}/{key[1]}:{port} does not exist")
            continue
        out.append(Backend(sp.cluster_name, int(ref.get("weight", 1))))
    return out


def _http_matches(matches: list[dict[str, Any]], unsupported: list[str]) -> list[PathMatch]:
    out = []
    for m in matches or [{}]:
        path = m.get("path") or {"type": "PathPrefix", "value": "/"}
        if path.get("type", "PathPrefix") not in ("PathPrefix", "Exact"):
            unsupported.append(f"path match type {path.get('type')}")
            continue
        extra = [k for k in ("headers", "queryParams", "method") if m.get(k)]
        if extra:
            # Matching on less than the user asked for would misroute traffic: skip the match.
            unsupported.extend(f"{k} matches" for k in extra)
            continue
        out.append(PathMatch(path.get("type", "PathPrefix"), path.get("value", "/")))
    return out


def _grpc_matches(matches: list[dict[str, Any]], unsupported: list[str]) -> list[PathMatch]:
    out = []
    for m in matches or [{}]:
        method = m.get("method") or {}
        if method.get("type", "Exact") != "Exact":
            unsupported.append(f"gRPC method match type {method.get('type')}")
            continue
        if m.get("headers"):
            unsupported.append("headers matches")
            continue
        svc, meth = method.get("service"), method.get("method")
        if svc and meth:
            out.append(PathMatch("Exact", f"/{svc}/{meth}"))
        elif svc:
            out.append(PathMatch("PathPrefix", f"/{svc}"))
        else:
            out.append(PathMatch("PathPrefix", "/"))
    return out


def _route(kind: str, key: Key, route: Resource, ports_of: dict[Key, dict[int, ServicePort]],
           matcher: Callable[[list[dict[str, Any]], list[str]], list[PathMatch]]) -> Route:
    ns, name = key
    spec = spec_of(route)
    gen = int((route.get("metadata") or {}).get("generation") or 1)
    parent_problems: list[str] = []
    ref_problems: list[str] = []
    unsupported: list[str] = []
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
        attached += [(pkey, p) for p in _parent_ports(ref, ports)]
    rules: list[Rule] = []
    default_port = attached[0][1] if attached else 0
    for i, rule in enumerate(spec.get("rules") or [{}]):
        backends = _backends(ns, rule.get("backendRefs") or [], ports_of, ref_problems,
                             default_port)
        matches = matcher(rule.get("matches") or [], unsupported)
        # Filters are configured by their plugins; one that no plugin runs leaves the rule out.
        filters = tuple(RuleFilter(j, str(f.get("type")))
                        for j, f in enumerate(rule.get("filters") or []))
        if not any(b.weight for b in backends):
            # No backend may take traffic (none is valid, or every weight is 0): the rule
            # answers 500, per Gateway API (and the proxy refuses a rule of zero weights).
            backends = [Backend("blackhole|invalid-backend")]
        rules.append(Rule(
            name=f"{kind.lower()}/{ns}/{name}/{i}", index=i, matches=tuple(matches),
            backends=tuple(backends),
            spec=rule, filters=filters,
            # No match left that the proxy can do: the rule stays in the model (plugins still
            # report on its settings) but is not rendered.
            left_out=not matches))
    return Route(kind=kind, namespace=ns, name=name, generation=gen, parents=tuple(attached),
                 rules=tuple(rules), parent_problems=tuple(parent_problems),
                 ref_problems=tuple(ref_problems),
                 dropped=tuple(Dropped(u, "unsupported") for u in unsupported))


def derive_routes(m: MeshInputs, services: tuple[ServicePort, ...]) -> tuple[Route, ...]:
    """Every HTTPRoute, then every GRPCRoute, each sorted by key, with what it attaches to."""
    ports_of: dict[Key, dict[int, ServicePort]] = {k: {} for k in m.services}
    for sp in services:
        ports_of[sp.key][sp.port] = sp
    out: list[Route] = []
    for kind, routes, matcher in (("HTTPRoute", m.http_routes, _http_matches),
                                  ("GRPCRoute", m.grpc_routes, _grpc_matches)):
        out.extend(_route(kind, key, routes[key], ports_of, matcher) for key in sorted(routes))
    return tuple(out)


__all__ = ["cluster_name", "derive_routes"]
