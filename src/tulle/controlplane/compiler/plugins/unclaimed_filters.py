"""A rule with a filter no plugin runs is left out, and its route's status says which.

Gateway API filters the data plane cannot run yet (redirects, rewrites, mirrors...) must not
silently forward the request unchanged instead: the rule is not rendered at all, and the route
reports `PartiallyInvalid` naming each such filter type.  This runs after every filter plugin,
so "unclaimed" means exactly "no plugin knows this type".
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Dropped, MeshModel, Route
from tulle.controlplane.compiler.plugins.base import Plugin, map_routes

NAME = "unclaimed_filters"


def _route(route: Route) -> Route:
    if not any(not f.claimed_by for r in route.rules for f in r.filters):
        return route
    dropped = [Dropped(f"filter {f.type}", "unsupported")
               for r in route.rules for f in r.filters if not f.claimed_by]
    rules = tuple(replace(r, left_out=True) if any(not f.claimed_by for f in r.filters) else r
                  for r in route.rules)
    return replace(route, rules=rules, dropped=route.dropped + tuple(dropped))


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
