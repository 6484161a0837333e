"""Policies attached by `targetRef` -> the model's policies, each with its target resolved;
the Mesh resource -> the model's mesh.

What a policy does is its plugin's job (`compiler/plugins/`); this module only finds out
whether the target exists, which every plugin and every status needs.  The target is looked up
in the policy's own namespace (Gateway API policy attachment); a `Mesh` target is the mesh.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler.inputs import MeshInputs, spec_of
from tulle.controlplane.compiler.ir import MeshResource, Policy


def _target_exists(m: MeshInputs, ns: str, ref: dict[str, Any]) -> bool:
    kind, name = ref.get("kind"), ref.get("name")
    key = (ns, str(name))
    if kind == "Mesh":
        return m.mesh is None or (m.mesh.get("metadata") or {}).get("name") == name
    tables = {"Service": m.services, "HTTPRoute": m.http_routes, "GRPCRoute": m.grpc_routes,
              "TCPRoute": m.tcp_routes}
    return key in tables.get(str(kind), {})


def derive_mesh(m: MeshInputs) -> MeshResource | None:
    if m.mesh is None:
        return None
    md = m.mesh.get("metadata") or {}
    return MeshResource(name=str(md.get("name")), generation=int(md.get("generation") or 1),
                        spec=spec_of(m.mesh))


def derive_policies(m: MeshInputs) -> tuple[Policy, ...]:
    out: list[Policy] = []
    for (kind, ns, name), policy in sorted(m.policies.items()):
        spec = spec_of(policy)
        ref = spec.get("targetRef") or {}
        out.append(Policy(
            kind=kind, namespace=ns, name=name,
            generation=int((policy.get("metadata") or {}).get("generation") or 1),
            target_kind=str(ref.get("kind")), target_name=str(ref.get("name")),
            target_found=_target_exists(m, ns, ref), spec=spec))
    return tuple(out)


__all__ = ["derive_mesh", "derive_policies"]
