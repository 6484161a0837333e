"""An incrementally rebuilt router routes exactly like one compiled from scratch.

Hypothesis generates route tables (virtual hosts from small alphabets of names, domains and
rules, so that duplicate domains, shared rule names and wildcards of equal length are common)
and a sequence of changes made the way snapshots change: a host replaced, removed or added in
place (a delta keeps every other host the same struct), one struct listed twice, hosts
reordered, the table decoded anew.
After each change the router built from the previous one (`Router(previous=)`) and a router
built from scratch must pick the same route (name and rule) for every authority and path, and
the rebuilt router's routes that share a name must share their state.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.router import Route, Router
from tulle.proxyconfig.model import RouteTable, VirtualHost

DOMAINS = ["x.com", "X.com", "y.com", "x.com:80", "*.com", "*.x.com", "*.y.com", "x.*", "y.*",
           "*"]
AUTHORITIES = ["x.com", "x.com:80", "x.com:81", "y.com", "a.x.com", "a.y.com", "z.com",
               "x.org", "y.org", "other", "[::1]:80"]
PATHS = ["/", "/a", "/b"]

rule = st.fixed_dictionaries({
    "name": st.sampled_from(["", "", "r1", "r2"]),
    "matches": st.lists(st.sampled_from(["/", "/a", "/b"]), max_size=2).map(
        lambda ps: [{"path": {"type": "PathPrefix", "value": p}} for p in ps]),
    "backends": st.sampled_from(["c1", "c2"]).map(lambda c: [{"cluster": c}]),
})
vhost = st.fixed_dictionaries({
    "name": st.sampled_from(["h1", "h2", "h3", "h4", "h5", "h6"]),
    "domains": st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=3),
    "rules": st.lists(rule, min_size=1, max_size=2),
}).map(lambda d: msgspec.convert(d, VirtualHost))
change = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 7), vhost),
    st.tuples(st.just("insert"), st.integers(0, 7), vhost),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("repeat"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("reverse")),
    st.tuples(st.just("reload")),
)


def changed(vhs: list[VirtualHost], c: tuple[Any, ...]) -> list[VirtualHost]:
    out = list(vhs)
    kind = c[0]
    if kind == "replace" and out:
        out[c[1] % len(out)] = c[2]
    elif kind == "insert":
        out.insert(c[1] % (len(out) + 1), c[2])
    elif kind == "remove" and out:
        del out[c[1] % len(out)]
    elif kind == "repeat" and out:  # the same struct twice in one table
        out.insert(c[2] % (len(out) + 1), out[c[1] % len(out)])
    elif kind == "reverse":
        out.reverse()
    elif kind == "reload":  # equal structs, none the same object
        out = msgspec.json.decode(msgspec.json.encode(out), type=list[VirtualHost])
    return out


def picked(r: Router, authority: str, path: str) -> tuple[str, Any] | None:
    route = r.route(RequestHead(b"GET", path.encode(), authority.encode(), b"http", []))
    return None if route is None else (route.name, route.rule)


def routes_of(r: Router) -> list[Route]:
    return [route for e in r.compiled.entries for route in e.routes]


@settings(max_examples=300, deadline=None)
@given(st.lists(vhost, max_size=6), st.lists(change, min_size=1, max_size=4))
def test_an_incremental_rebuild_routes_like_a_build_from_scratch(
        start: list[VirtualHost], changes: list[tuple[Any, ...]]) -> None:
    vhs = start
    router = Router(RouteTable(name="rt", virtual_hosts=vhs), 15000)
    for c in changes:
        vhs = changed(vhs, c)
        table = RouteTable(name="rt", virtual_hosts=vhs)
        router = Router(table, 15000, previous=router)
        scratch = Router(table, 15000)
        for a in AUTHORITIES:
            for p in PATHS:
                assert picked(router, a, p) == picked(scratch, a, p), (c, a, p)
        assert (router.only is None) == (scratch.only is None)
        assert router.routes.keys() == scratch.routes.keys()
        for route in routes_of(router):  # rules sharing a name share its state
            assert route.state is router.routes[route.name].state
        assert len(router.compiled.entries) == len(vhs)
