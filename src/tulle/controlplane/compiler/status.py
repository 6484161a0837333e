"""Status conditions, rendered from the model after every plugin has run.

A route's conditions say whether it attached (`Accepted`), whether its backends resolved
(`ResolvedRefs`) and, when anything of it is not in force, what and why (`PartiallyInvalid`,
from `Route.dropped`, which the route stage and the plugins fill).  Policies' conditions are
written by the plugins themselves (`MeshModel.conditions`).  Routes come first, as the
reconciler writes them in this order.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler.ir import Condition, MeshModel, ObjectRef, Route


def route_conditions(route: Route) -> tuple[Condition, ...]:
    gen = route.generation
    parents = "; ".join(route.parent_problems)
    conds = [Condition("Accepted", True, "Accepted", parents, gen) if route.parents else
             Condition("Accepted", False, "NoMatchingParent", parents or "no parentRefs", gen)]
    refs = route.ref_problems
    conds.append(Condition("ResolvedRefs", not refs, route.ref_reason if refs else "ResolvedRefs",
                           "; ".join(refs), gen))
    unsupported = [d.what for d in route.dropped if d.reason == "unsupported"]
    invalid = [d.what for d in route.dropped if d.reason == "invalid"]
    if unsupported or invalid:
        why = []
        if unsupported:
            why.append("left out (not supported yet): " + ", ".join(sorted(set(unsupported))))
        if invalid:
            why.append("left out (invalid): " + "; ".join(invalid))
        conds.append(Condition("PartiallyInvalid", True, "UnsupportedValue", "; ".join(why), gen))
    return tuple(conds)


def conditions(mesh: MeshModel) -> dict[ObjectRef, list[dict[str, Any]]]:
    """Every condition of the compilation, per resource, in the status API's shape."""
    out = {r.ref: [c.render() for c in route_conditions(r)] for r in mesh.routes}
    out.update((ref, [c.render() for c in conds]) for ref, conds in mesh.conditions.items())
    return out


__all__ = ["conditions", "route_conditions"]
