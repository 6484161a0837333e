"""Every targetRef policy no plugin spoke for gets `Accepted=False`, saying why.

A stored policy must not look as if it worked.  A plugin that enforces a policy kind writes
that policy's conditions itself; whatever policy has none when this plugin runs (last) is one
the data plane does not enforce: `Unsupported` — or `TargetNotFound` when its target does not
exist, which is worth knowing whatever the kind.  Today that is a TimeoutPolicy on a TCPRoute
(TCPRoutes are not run yet); TimeoutPolicy is otherwise `timeouts`', RetryPolicy `retries'`,
AuthorizationPolicy `authorization`'s, each writing its own status.  Each later plugin that
enforces a kind takes it off this list the same way.
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Condition, MeshModel, ObjectRef
from tulle.controlplane.compiler.plugins.base import Plugin

NAME = "unenforced_policies"


def apply(mesh: MeshModel) -> MeshModel:
    todo = [p for p in mesh.policies if p.ref not in mesh.conditions]
    if not todo:
        return mesh
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    for p in todo:
        if not p.target_found:
            reason = "TargetNotFound"
            message = f"target {p.target_kind} {p.namespace}/{p.target_name} does not exist"
        else:
            reason = "Unsupported"
            message = f"{p.kind} is validated and stored, but the data plane does not enforce it yet"
        conditions[p.ref] = (Condition("Accepted", False, reason, message, p.generation),)
    return replace(mesh, conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("conditions",))
