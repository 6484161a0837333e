"""Resources + discovered endpoints -> one `ProxyConfig` per proxy.  Pure and deterministic.

The steps run in one declared order (`ORDER`), each a module of its own:

1. services — every Service port: its cluster (endpoints from workload selection) and names;
2. routes   — HTTPRoute / GRPCRoute attached to Services replace those Services' default rules;
3. proxies  — per workload: its inbound listeners and clusters, then the outbound route table
              and the clusters it references.

Policies attached by `targetRef` (traffic management, zero trust) become further steps between
2 and 3, each rewriting the shared artefacts before they are assembled per proxy.

Same inputs, same bytes: collections are sorted by key, and a snapshot's `version` is a hash of
its own content, so an unchanged proxy keeps its version and gets no push.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, key_of
from tulle.controlplane.compiler.proxies import inbound, outbound
from tulle.controlplane.compiler.routes import Condition, compile_routes
from tulle.controlplane.compiler.services import ServicePort, service_ports
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.validate import validate

ORDER = ("services", "routes", "proxies")


@dataclass
class CompileResult:
    snapshots: dict[Key, ProxyConfig] = field(default_factory=dict)
    conditions: dict[tuple[str, str, str], list[Condition]] = field(default_factory=dict)
    """Status conditions per (kind, namespace, name) of the resources that have them."""
    errors: dict[Key, str] = field(default_factory=dict)
    """Proxies whose snapshot could not be built (and why); the others are unaffected."""


def version_of(raw: dict[str, Any]) -> str:
    body = msgspec.json.encode({k: v for k, v in raw.items() if k != "version"}, order="sorted")
    return hashlib.sha256(body).hexdigest()[:16]


def compile_proxy(workload: Resource, ports: list[ServicePort],
                  routed: dict[tuple[Key, int], list[dict[str, Any]]]) -> ProxyConfig:
    ns, name = key_of(workload)
    in_listeners, in_clusters = inbound(workload)
    out_listeners, tables, out_clusters = outbound(workload, ports, routed)
    labels = (workload.get("metadata") or {}).get("labels") or {}
    raw: dict[str, Any] = {
        "node": {"name": name, "namespace": ns, "service": labels.get("app", "")},
        "listeners": in_listeners + out_listeners,
        "route_tables": tables,
        "clusters": in_clusters + out_clusters,
    }
    raw["version"] = version_of(raw)
    return validate(raw)


def compile_mesh(m: MeshInputs) -> CompileResult:
    result = CompileResult()
    svc_ports = {k: {sp.port: sp for sp in service_ports(m, k, s)}
                 for k, s in sorted(m.services.items())}
    all_ports = [sp for k in sorted(svc_ports) for _, sp in sorted(svc_ports[k].items())]
    routes = compile_routes(m, svc_ports)
    result.conditions.update(routes.conditions)
    for key in sorted(m.workloads):
        try:
            result.snapshots[key] = compile_proxy(m.workloads[key], all_ports, routes.rules)
        except ValueError as exc:  # ConfigError included: e.g. two ports on one address
            result.errors[key] = str(exc)
    return result


__all__ = ["ORDER", "CompileResult", "MeshInputs", "compile_mesh", "compile_proxy", "version_of"]
