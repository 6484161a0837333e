"""HTTPRoute and GRPCRoute with a Service parent (GAMMA) -> rules of that Service's host.

A route attached to a Service replaces the Service's default rule for the parent's port (or all
its ports when the parentRef names none).  Several routes on one Service are merged; the router
orders matches by Gateway API precedence.  Request and response header modifiers compile into
the rule's `filters`; a rule with any other filter, or with header settings the proxy would
refuse, is left out.  What the data plane cannot do yet is never dropped silently: the route's
`Accepted` / `ResolvedRefs` / `PartiallyInvalid` conditions say what was ignored and why, and
the rest of the mesh compiles regardless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, spec_of
from tulle.controlplane.compiler.services import ServicePort, cluster_name
from tulle.proxyconfig import filters as proxy_filters
from tulle.proxyconfig.filters import HTTPFilter
from tulle.proxyconfig.validate import convert_error

Condition = dict[str, Any]


@dataclass
class RouteResult:
    """Compiled rules per (service key, port), and the conditions for each route."""

    rules: dict[tuple[Key, int], list[dict[str, Any]]] = field(default_factory=dict)
    conditions: dict[tuple[str, str, str], list[Condition]] = field(default_factory=dict)


def _cond(type_: str, ok: bool, reason: str, message: str, generation: int) -> Condition:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": generation}


def _parent_ports(ref: dict[str, Any], ports: dict[int, ServicePort]) -> list[int]:
    port = ref.get("port")
    return sorted(ports) if port is None else ([int(port)] if int(port) in ports else [])


def _backends(ns: str, refs: list[dict[str, Any]], svc_ports: dict[Key, dict[int, ServicePort]],
              problems: list[str], default_port: int) -> list[dict[str, Any]]:
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
        out.append({"cluster": sp.cluster_name, "weight": int(ref.get("weight", 1))})
    return out


def _http_matches(matches: list[dict[str, Any]], unsupported: list[str]) -> list[dict[str, Any]]:
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
        out.append({"path": {"type": path.get("type", "PathPrefix"),
                             "value": path.get("value", "/")}})
    return out


def _grpc_matches(matches: list[dict[str, Any]], unsupported: list[str]) -> list[dict[str, Any]]:
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
            out.append({"path": {"type": "Exact", "value": f"/{svc}/{meth}"}})
        elif svc:
            out.append({"path": {"type": "PathPrefix", "value": f"/{svc}"}})
        else:
            out.append({"path": {"type": "PathPrefix", "value": "/"}})
    return out


HEADER_FILTERS = {"RequestHeaderModifier": "requestHeaderModifier",
                  "ResponseHeaderModifier": "responseHeaderModifier"}
"""Gateway API filter types the data plane runs, and the field each one's settings are in."""


def _filters(rule: dict[str, Any], where: str, unsupported: list[str],
             invalid: list[str]) -> list[dict[str, Any]] | None:
    """A rule's filters as the contract's tagged list, or None when the rule must be left out
    (a filter the data plane cannot run, or one whose settings it would refuse)."""
    out: list[dict[str, Any]] = []
    ok = True
    for j, f in enumerate(rule.get("filters") or []):
        kind = f.get("type")
        field_name = HEADER_FILTERS.get(kind or "")
        if field_name is None:
            unsupported.append(f"filter {kind}")
            ok = False
            continue
        spec = f.get(field_name) or {}
        entry: dict[str, Any] = {"type": kind}
        for key in ("set", "add", "remove"):
            if spec.get(key):
                entry[key] = spec[key]
        path = f"{where}.filters[{j}]"
        try:
            cfg = msgspec.convert(entry, HTTPFilter)
        except msgspec.ValidationError as exc:
            invalid.append(str(convert_error(exc, path)))
            ok = False
            continue
        errs = proxy_filters.errors(cfg, path)
        if errs:
            invalid.extend(str(e) for e in errs)
            ok = False
            continue
        out.append(entry)
    return out if ok else None


def compile_routes(m: MeshInputs, svc_ports: dict[Key, dict[int, ServicePort]]) -> RouteResult:
    res = RouteResult()
    for kind, routes, matcher in (("HTTPRoute", m.http_routes, _http_matches),
                                  ("GRPCRoute", m.grpc_routes, _grpc_matches)):
        for key in sorted(routes):
            route: Resource = routes[key]
            ns, name = key
            spec = spec_of(route)
            gen = int((route.get("metadata") or {}).get("generation") or 1)
            problems: list[str] = []
            unsupported: list[str] = []
            invalid: list[str] = []
            attached: list[tuple[Key, int]] = []
            for ref in spec.get("parentRefs") or []:
                if ref.get("kind", "Service") != "Service":
                    problems.append(f"parentRef {ref.get('name')}: only Service parents (GAMMA) "
                                    "are supported")
                    continue
                pkey = (ref.get("namespace") or ns, ref["name"])
                ports = svc_ports.get(pkey)
                if ports is None:
                    problems.append(f"parent Service {pkey[0]}/{pkey[1]} does not exist")
                    continue
                attached += [(pkey, p) for p in _parent_ports(ref, ports)]
            rules_out: list[dict[str, Any]] = []
            for i, rule in enumerate(spec.get("rules") or [{}]):
                # A rule whose filters we cannot apply (redirect, rewrite...) or whose filter
                # settings are invalid must not silently forward instead: leave it out.
                filters = _filters(rule, f"rules[{i}]", unsupported, invalid)
                if filters is None:
                    continue
                default_port = attached[0][1] if attached else 0
                backends = _backends(ns, rule.get("backendRefs") or [], svc_ports, problems,
                                     default_port)
                matches = matcher(rule.get("matches") or [], unsupported)
                if not matches:
                    continue
                r: dict[str, Any] = {"name": f"{kind.lower()}/{ns}/{name}/{i}",
                                     "matches": matches}
                timeout = (rule.get("timeouts") or {}).get("request")
                if timeout:
                    try:
                        r["timeout_ms"] = to_ms(str(timeout))
                    except ValueError as exc:
                        problems.append(f"rules[{i}].timeouts.request: {exc}")
                # A rule whose backends are all invalid answers 500, per Gateway API.
                r["backends"] = backends or [{"cluster": "blackhole|invalid-backend"}]
                if filters:
                    r["filters"] = filters
                rules_out.append(r)
            for target in attached:
                res.rules.setdefault(target, []).extend(rules_out)
            parent_problems = [p for p in problems if p.startswith("parent")]
            ref_problems = [p for p in problems if not p.startswith("parent")]
            conds = [_cond("Accepted", True, "Accepted", "; ".join(parent_problems), gen)
                     if attached else
                     _cond("Accepted", False, "NoMatchingParent",
                           "; ".join(parent_problems) or "no parentRefs", gen)]
            conds.append(_cond("ResolvedRefs", not ref_problems,
                               "BackendNotFound" if ref_problems else "ResolvedRefs",
                               "; ".join(ref_problems), gen))
            if unsupported or invalid:
                why = []
                if unsupported:
                    why.append("left out (not supported yet): "
                               + ", ".join(sorted(set(unsupported))))
                if invalid:
                    why.append("left out (invalid): " + "; ".join(invalid))
                conds.append(_cond("PartiallyInvalid", True, "UnsupportedValue",
                                   "; ".join(why), gen))
            res.conditions[(kind, ns, name)] = conds
    return res


__all__ = ["RouteResult", "cluster_name", "compile_routes"]
