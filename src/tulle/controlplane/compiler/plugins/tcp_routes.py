"""Every TCPRoute gets `Accepted=False` on each parent, saying why: the proxies do not run it.

A TCPRoute steers connections to a Service's port, which only works once those connections
reach a proxy without the client choosing to send them there — transparent interception
(issue 11).  Until then the route is validated and stored, and must not look as if it worked
(issue 8, item 8): each `spec.parentRefs[i]` gets `Accepted=False` with reason
`UnsupportedValue` (Gateway API's reason for a route an implementation cannot honour), or
`NoMatchingParent` when that parent does not resolve (worth knowing either way), and the route
`ResolvedRefs` as its backends resolve, so that fixing them before interception lands is
possible.  When interception lands, this plugin becomes the one that renders TCPRoutes.
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Condition, MeshModel, ObjectRef, TCPRoute
from tulle.controlplane.compiler.plugins.base import Plugin

NAME = "tcp_routes"

WHY = ("TCPRoute is validated and stored, but not enforced: TCP routing needs intercepted "
       "traffic (transparent listeners, not there yet), so connections to {parent} go to its "
       "endpoints as if no route were attached")


def route_conditions(route: TCPRoute) -> tuple[Condition, ...]:
    gen = route.generation
    conds = [Condition("Accepted", False, "NoMatchingParent", p.problem, gen, p.index)
             if p.problem else
             Condition("Accepted", False, "UnsupportedValue", WHY.format(parent=p.label), gen,
                       p.index)
             for p in route.parents]
    refs = route.ref_problems
    conds.append(Condition("ResolvedRefs", not refs, route.ref_reason if refs else "ResolvedRefs",
                           "; ".join(refs), gen))
    return tuple(conds)


def apply(mesh: MeshModel) -> MeshModel:
    if not mesh.tcp_routes:
        return mesh
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    for route in mesh.tcp_routes:
        conditions[route.ref] = route_conditions(route)
    return replace(mesh, conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("conditions",))
