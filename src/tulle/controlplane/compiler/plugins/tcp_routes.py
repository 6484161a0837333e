"""TCPRoute status: which parents the transparent listeners enforce the route on, and why not.

A TCPRoute steers connections to a Service's port; the proxies run it on the transparent
outbound listener (`transparent.py`, ADR 0044): a client's connection to the parent Service's
`virtualIP:port` goes to the route's backends, weighted.  Each `spec.parentRefs[i]` gets its
`Accepted` condition:

- `True` (`Accepted`) for a producer route (in the parent Service's namespace) that decides
  that port -- the oldest route on a port, then by namespace/name;
- `False`, `NoMatchingParent`, when the parent does not resolve;
- `False`, `Conflicted`, when an older producer route decides the same Service port;
- `True` (`Accepted`) for a consumer route (in another namespace than the Service) that decides
  that port for the clients of its own namespace -- there it takes precedence over the
  producer route, as Gateway API's mesh profile says; the oldest consumer route of one
  namespace wins, then by name;
- `False`, `Conflicted`, when an older route of the same kind (producer, or consumer in the
  same namespace) decides the same Service port.

The route's `ResolvedRefs` says which backends resolve; one that does not takes no share.
Clients whose workload is `interception: explicit` send TCP to a Service nowhere through their
proxy, so a TCPRoute is a transparent client's affair by construction.
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Condition, Key, MeshModel, ObjectRef, TCPRoute
from tulle.controlplane.compiler.plugins.base import Plugin

NAME = "tcp_routes"

ENFORCED = ("enforced on transparent clients' outbound listener: connections to {parent}'s "
            "virtual IP go to this route's backends")
CONSUMER = ("enforced for transparent clients in namespace {ns} (a consumer route, ahead of "
            "{parent}'s own): their connections to its virtual IP go to this route's backends")


def winning_tcp_routes(mesh: MeshModel) -> dict[tuple[Key, int], TCPRoute]:
    """The TCPRoute that decides each Service port: producer routes only (the route in the
    Service's namespace; a consumer TCPRoute is reported, not run), the oldest first, then by
    namespace/name (Gateway API's tie-break)."""
    out: dict[tuple[Key, int], TCPRoute] = {}
    for route in sorted(mesh.tcp_routes, key=lambda r: (r.created, r.namespace, r.name)):
        for parent in route.parents:
            for target in parent.targets:
                if target[0][0] == route.namespace:
                    out.setdefault(target, route)
    return out


def winning_consumer_tcp_routes(mesh: MeshModel
                                ) -> dict[str, dict[tuple[Key, int], TCPRoute]]:
    """Per client namespace, the consumer TCPRoute (one in that namespace whose parent
    Service is in another) that decides each Service port for that namespace's clients:
    the oldest first, then by name."""
    out: dict[str, dict[tuple[Key, int], TCPRoute]] = {}
    for route in sorted(mesh.tcp_routes, key=lambda r: (r.created, r.namespace, r.name)):
        for parent in route.parents:
            for target in parent.targets:
                if target[0][0] != route.namespace:
                    out.setdefault(route.namespace, {}).setdefault(target, route)
    return out


def route_conditions(route: TCPRoute, winners: dict[tuple[Key, int], TCPRoute],
                     consumers: dict[str, dict[tuple[Key, int], TCPRoute]] | None = None
                     ) -> tuple[Condition, ...]:
    gen = route.generation
    conds = []
    for p in route.parents:
        if p.problem:
            conds.append(Condition("Accepted", False, "NoMatchingParent", p.problem, gen,
                                   p.index))
            continue
        consumer = any(t[0][0] != route.namespace for t in p.targets)
        deciding = (consumers or {}).get(route.namespace, {}) if consumer else winners
        lost = [(t, deciding[t]) for t in p.targets if deciding.get(t) is not route]
        if lost:
            t, w = lost[0]
            conds.append(Condition("Accepted", False, "Conflicted",
                                   f"TCPRoute {w.namespace}/{w.name} decides Service "
                                   f"{t[0][0]}/{t[0][1]}:{t[1]} (the oldest, then by "
                                   "namespace/name)", gen, p.index))
            continue
        text = (CONSUMER.format(ns=route.namespace, parent=p.label) if consumer
                else ENFORCED.format(parent=p.label))
        conds.append(Condition("Accepted", True, "Accepted", text, gen, p.index))
    refs = route.ref_problems
    conds.append(Condition("ResolvedRefs", not refs, route.ref_reason if refs else "ResolvedRefs",
                           "; ".join(refs), gen))
    return tuple(conds)


def apply(mesh: MeshModel) -> MeshModel:
    if not mesh.tcp_routes:
        return mesh
    winners = winning_tcp_routes(mesh)
    consumers = winning_consumer_tcp_routes(mesh)
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    for route in mesh.tcp_routes:
        conditions[route.ref] = route_conditions(route, winners, consumers)
    return replace(mesh, conditions=conditions)


PLUGIN = Plugin(NAME, apply, affects=("conditions",))
