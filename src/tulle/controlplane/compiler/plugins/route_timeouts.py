"""A route rule's own `timeouts` (Gateway API, GEP-1742) -> the rule's timeouts.

`timeouts.request` bounds the whole request (the rule's timeout); `timeouts.backendRequest`
bounds each try to a backend, from opening it to the response's end (the proxy's per-try
deadline, 504 `UT`), and may not be longer than `request` when that is set and not 0 (the API
refuses it; a stored one is reported here and left out).  `backendRequest` `0s` means no
per-try limit.  The route's own value is the most specific one there is; policies that set
timeouts for a Service or the mesh (TimeoutPolicy, Mesh defaults) come after this plugin and
fill in only rules that have none.  A duration the proxy cannot take is not guessed at: the
route's status says it was left out, and the rule runs without it.
"""

from __future__ import annotations

from msgspec.structs import replace

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import Dropped, MeshModel, Route, Rule
from tulle.controlplane.compiler.plugins.base import Plugin, map_routes

NAME = "route_timeouts"


def _timeouts(r: Rule) -> tuple[object, object]:
    t = r.spec.get("timeouts") or {}
    return t.get("request"), t.get("backendRequest")


def _rule(r: Rule, invalid: list[Dropped]) -> Rule:
    request, backend = _timeouts(r)
    if request:
        try:
            r = replace(r, timeout_ms=to_ms(str(request)))
        except ValueError as exc:
            invalid.append(Dropped(f"rules[{r.index}].timeouts.request: {exc}", "invalid"))
    if backend:
        where = f"rules[{r.index}].timeouts.backendRequest"
        try:
            ms = to_ms(str(backend))
        except ValueError as exc:
            invalid.append(Dropped(f"{where}: {exc}", "invalid"))
            return r
        if ms and r.timeout_ms and ms > r.timeout_ms:
            invalid.append(Dropped(f"{where}: must not be longer than the request timeout",
                                   "invalid"))
            return r
        r = replace(r, backend_timeout_ms=ms or None)
    return r


def _route(route: Route) -> Route:
    if not any(any(_timeouts(r)) for r in route.rules):
        return route
    invalid: list[Dropped] = []
    rules = tuple(_rule(r, invalid) for r in route.rules)
    return replace(route, rules=rules, dropped=route.dropped + tuple(invalid))


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
