"""Policies attached by `targetRef`: resolve their targets and say, in status, what they do.

No policy kind is enforced by the data plane yet (timeouts, retries and authorization arrive
with the traffic-management and zero-trust issues, each as a compiler step of its own between
`routes` and `proxies`).  Until then a stored policy must not look as if it worked: each gets
`Accepted=False` with reason `Unsupported` — or `TargetNotFound` when its target does not
exist, which is worth knowing already.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler.inputs import MeshInputs, spec_of

Condition = dict[str, Any]


def _target_exists(m: MeshInputs, ns: str, ref: dict[str, Any]) -> bool:
    kind, name = ref.get("kind"), ref.get("name")
    key = (ns, str(name))
    if kind == "Mesh":
        return m.mesh is None or (m.mesh.get("metadata") or {}).get("name") == name
    tables = {"Service": m.services, "HTTPRoute": m.http_routes, "GRPCRoute": m.grpc_routes,
              "TCPRoute": m.tcp_routes}
    return key in tables.get(str(kind), {})


def policy_conditions(m: MeshInputs) -> dict[tuple[str, str, str], list[Condition]]:
    out: dict[tuple[str, str, str], list[Condition]] = {}
    for (kind, ns, name), policy in sorted(m.policies.items()):
        ref = spec_of(policy).get("targetRef") or {}
        gen = int((policy.get("metadata") or {}).get("generation") or 1)
        if not _target_exists(m, ns, ref):
            reason, message = "TargetNotFound", (
                f"target {ref.get('kind')} {ns}/{ref.get('name')} does not exist")
        else:
            reason, message = "Unsupported", (
                f"{kind} is validated and stored, but the data plane does not enforce it yet")
        out[(kind, ns, name)] = [{"type": "Accepted", "status": "False", "reason": reason,
                                  "message": message, "observedGeneration": gen}]
    return out
