"""Per-route state that outlives a snapshot: what a route has counted or accumulated.

Why a separate object: a `Route` is rebuilt when its rule changes, but what the route has
seen must not start over on every unrelated config push (DESIGN.md decision 3: state carries
over by route name).  The `Router` hands a route's state to its successor of the same name
(`router._carry`); rate-limit buckets and retry budgets (later issues) will live here too, so
they survive swaps the same way.  Today: requests routed to the route, exported as
`tulle_proxy_route_requests_total{route_table, route}` (one series per route of the
snapshot in force: cardinality is bounded by the config, and a removed route's series goes).
"""

from __future__ import annotations

from tulle.dataplane.telemetry.metrics import CounterChild


class RouteState:
    __slots__ = ("filters", "requests")

    def __init__(self) -> None:
        self.requests = CounterChild()
        """Requests the router sent to this route (counted when routed, whatever followed)."""
        self.filters: dict[str, object] = {}
        """What filters keep across swaps, by filter name: a factory with an `adopt(store)`
        takes its predecessor's state from here and leaves its own (rate-limit buckets and
        the Redis connection, `filters/ratelimit.py`)."""
