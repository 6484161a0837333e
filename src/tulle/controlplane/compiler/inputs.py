"""The compiler's view of the mesh: validated resources as plain Kubernetes-shaped dicts.

The compiler reads the same shape the store holds (`apiVersion`, `kind`, `metadata`, `spec`,
`status`), already validated by `tulle.api`, so it does not depend on the models' Python
classes — only on the field names of the resource API, which are the user's contract anyway.
`MeshInputs` indexes them once per compilation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Resource = dict[str, Any]
Key = tuple[str, str]
"""(namespace, name)."""


def key_of(obj: Resource) -> Key:
    md = obj.get("metadata") or {}
    return (md.get("namespace") or "default", md["name"])


def spec_of(obj: Resource) -> dict[str, Any]:
    return obj.get("spec") or {}


def _proxy_gone(workload: Resource) -> bool:
    """A Workload whose proxy had connected and is gone (`status.proxy.state`, written by the
    control plane that held its stream: `controlplane/readiness.py`).  One that never had a
    proxy has no `status.proxy` and is selected as declared."""
    proxy = (workload.get("status") or {}).get("proxy")
    return isinstance(proxy, dict) and proxy.get("state") == "Disconnected"


@dataclass
class MeshInputs:
    mesh: Resource | None = None
    workloads: dict[Key, Resource] = field(default_factory=dict)
    services: dict[Key, Resource] = field(default_factory=dict)
    http_routes: dict[Key, Resource] = field(default_factory=dict)
    grpc_routes: dict[Key, Resource] = field(default_factory=dict)
    tcp_routes: dict[Key, Resource] = field(default_factory=dict)
    reference_grants: dict[Key, Resource] = field(default_factory=dict)
    """Gateway API ReferenceGrants: which cross-namespace backendRefs a namespace permits."""
    policies: dict[tuple[str, str, str], Resource] = field(default_factory=dict)
    """(kind, namespace, name) -> policy resource (attached by targetRef)."""
    _by_label: dict[tuple[str, str, str], set[Key]] = field(default_factory=dict)
    """(namespace, label key, label value) -> workloads carrying it: selection without a scan."""
    out: set[Key] = field(default_factory=set)
    """Workloads whose proxy is out by readiness (`_proxy_gone`): selected as members, never
    as endpoints."""

    def select(self, namespace: str, selector: dict[str, str]) -> list[tuple[Key, Resource]]:
        """Workloads of `namespace` matching every label of `selector` (Kubernetes Service
        semantics: an empty selector selects nothing), sorted by key; without those out by
        readiness (ADR 0040)."""
        return [(k, w) for k, w in self.members(namespace, selector) if k not in self.out]

    def members(self, namespace: str, selector: dict[str, str]) -> list[tuple[Key, Resource]]:
        """`select`, with the workloads out by readiness too: a Service's inbound-side
        settings still apply to them (ADR 0116)."""
        if not selector:
            return []
        sets = [self._by_label.get((namespace, k, v), set()) for k, v in selector.items()]
        sets.sort(key=len)
        found = set(sets[0]).intersection(*sets[1:])
        return [(k, self.workloads[k]) for k in sorted(found)]

    @classmethod
    def from_resources(cls, resources: Iterable[Resource]) -> MeshInputs:
        m = cls()
        for obj in resources:
            kind = obj.get("kind")
            if kind == "Mesh":
                m.mesh = obj
            elif kind == "Workload":
                key = key_of(obj)
                m.workloads[key] = obj
                if _proxy_gone(obj):
                    m.out.add(key)  # no Service's endpoint (ADR 0040: readiness)
                for lk, lv in ((obj.get("metadata") or {}).get("labels") or {}).items():
                    m._by_label.setdefault((key[0], lk, lv), set()).add(key)
            elif kind == "Service":
                m.services[key_of(obj)] = obj
            elif kind == "HTTPRoute":
                m.http_routes[key_of(obj)] = obj
            elif kind == "GRPCRoute":
                m.grpc_routes[key_of(obj)] = obj
            elif kind == "TCPRoute":
                m.tcp_routes[key_of(obj)] = obj
            elif kind == "ReferenceGrant":
                m.reference_grants[key_of(obj)] = obj
            elif isinstance(kind, str) and "targetRef" in spec_of(obj):
                m.policies[(kind, *key_of(obj))] = obj
        return m
