"""A route rule's own `timeouts.request` (Gateway API, GEP-1742) -> the rule's timeout.

The route's own value is the most specific one there is; policies that set timeouts for a
Service or the mesh (TimeoutPolicy, Mesh defaults) come after this plugin and fill in only
rules that have none.  A duration the proxy cannot take is not guessed at: the route's status
says it was left out, and the rule runs without it.
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import Dropped, MeshModel, Route, Rule
from tulle.controlplane.compiler.plugins.base import Plugin, map_routes

NAME = "route_timeouts"


def _request_timeout(r: Rule) -> object:
    return (r.spec.get("timeouts") or {}).get("request")


def _route(route: Route) -> Route:
    if not any(_request_timeout(r) for r in route.rules):
        return route
    rules: list[Rule] = []
    invalid: list[Dropped] = []
    for r in route.rules:
        timeout = _request_timeout(r)
        if not timeout:
            rules.append(r)
            continue
        try:
            rules.append(replace(r, timeout_ms=to_ms(str(timeout))))
        except ValueError as exc:
            invalid.append(Dropped(f"rules[{r.index}].timeouts.request: {exc}", "invalid"))
            rules.append(r)
    return replace(route, rules=tuple(rules), dropped=route.dropped + tuple(invalid))


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
