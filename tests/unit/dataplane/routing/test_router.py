"""The compiled router: host lookup order, Gateway API path precedence, weighted backends."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.router import Router
from tulle.proxyconfig import validate


def at(authority: str, path: str, method: str = "GET",
       headers: tuple[tuple[str, str], ...] = ()) -> RequestHead:
    """A request head as a driver hands it to the router."""
    return RequestHead(method.encode(), path.encode(), authority.encode(), b"http",
                       [(n.lower().encode(), v.encode()) for n, v in headers])


def router(hosts: list[dict[str, Any]]) -> Router:
    clusters = {b["cluster"] for h in hosts for r in h["rules"] for b in r["backends"]}
    cfg = validate({
        "clusters": [{"name": c} for c in sorted(clusters)],
        "route_tables": [{"name": "rt", "virtual_hosts": hosts}],
    })
    return Router(cfg.route_tables[0], default_timeout_ms=15000)


def rule(cluster: str, *paths: tuple[str, str], timeout_ms: int | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"backends": [{"cluster": cluster}]}
    if paths:
        r["matches"] = [{"path": {"type": t, "value": v}} for t, v in paths]
    if timeout_ms is not None:
        r["timeout_ms"] = timeout_ms
    return r


def target(r: Router, authority: str, path: str) -> str | None:
    route = r.route(at(authority, path))
    return None if route is None else route.pick_cluster()


def test_host_lookup_order_exact_suffix_prefix_any() -> None:
    r = router([
        {"name": "exact", "domains": ["api.example.com"], "rules": [rule("exact")]},
        {"name": "suffix", "domains": ["*.example.com"], "rules": [rule("suffix")]},
        {"name": "longsuffix", "domains": ["*.eu.example.com"], "rules": [rule("longsuffix")]},
        {"name": "prefix", "domains": ["api.*"], "rules": [rule("prefix")]},
        {"name": "any", "domains": ["*"], "rules": [rule("any")]},
    ])
    assert target(r, "api.example.com", "/") == "exact"
    assert target(r, "API.Example.com:8080", "/") == "exact"
    assert target(r, "web.example.com", "/") == "suffix"
    assert target(r, "web.eu.example.com", "/") == "longsuffix"
    assert target(r, "api.internal", "/") == "prefix"
    assert target(r, "other", "/") == "any"
    assert target(r, "example.com", "/") == "any"  # a wildcard needs at least one more label


def test_without_a_catch_all_an_unknown_host_has_no_route() -> None:
    r = router([{"name": "a", "domains": ["a"], "rules": [rule("a")]}])
    assert r.route(at("b", "/")) is None


def test_port_in_domain_is_matched_exactly() -> None:
    r = router([
        {"name": "p", "domains": ["svc:8080"], "rules": [rule("p8080")]},
        {"name": "any", "domains": ["svc"], "rules": [rule("bare")]},
    ])
    assert target(r, "svc:8080", "/") == "p8080"
    assert target(r, "svc:9090", "/") == "bare"


def test_path_precedence_exact_then_longest_prefix_then_order() -> None:
    r = router([{"name": "h", "rules": [
        rule("root", ("PathPrefix", "/")),
        rule("api", ("PathPrefix", "/api")),
        rule("apiv2", ("PathPrefix", "/api/v2/")),
        rule("login", ("Exact", "/api/login")),
    ]}])
    assert target(r, "h", "/") == "root"
    assert target(r, "h", "/api") == "api"
    assert target(r, "h", "/api/") == "api"
    assert target(r, "h", "/api/x?y=1") == "api"
    assert target(r, "h", "/apix") == "root"  # prefixes match whole segments
    assert target(r, "h", "/api/v2") == "apiv2"
    assert target(r, "h", "/api/v2/things") == "apiv2"
    assert target(r, "h", "/api/login") == "login"
    assert target(r, "h", "/api/login/x") == "api"


def test_no_matching_path_is_no_route() -> None:
    r = router([{"name": "h", "rules": [rule("api", ("PathPrefix", "/api"))]}])
    assert r.route(at("h", "/other")) is None


def test_timeouts_default_and_override() -> None:
    r = router([{"name": "h", "rules": [rule("slow", ("PathPrefix", "/slow"), timeout_ms=0),
                                         rule("other")]}])
    slow = r.route(at("h", "/slow"))
    other = r.route(at("h", "/x"))
    assert slow is not None and slow.timeout_ms == 0
    assert other is not None and other.timeout_ms == 15000


def test_weighted_backends_split_by_weight() -> None:
    r = router([{"name": "h", "rules": [{"backends": [
        {"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10},
        {"cluster": "off", "weight": 0}]}]}])
    route = r.route(at("h", "/"))
    assert route is not None
    rng = random.Random(7)
    counts = Counter(route.pick_cluster(rng) for _ in range(10_000))
    assert set(counts) == {"v1", "v2"}
    assert 850 <= counts["v2"] <= 1150


def test_a_table_with_one_catch_all_rule_needs_no_lookup() -> None:
    only = router([{"name": "any", "domains": ["*"], "rules": [rule("web")]}])
    assert only.only is not None and only.only is only.route(at("anything:8080", "/x?y"))
    assert only.only.pick_cluster() == "web"


def test_a_table_with_anything_to_choose_is_looked_up() -> None:
    prefixed = router([{"name": "any", "domains": ["*"],
                        "rules": [rule("api", ("PathPrefix", "/api")), rule("web")]}])
    named = router([{"name": "h", "domains": ["a.example"], "rules": [rule("web")]}])
    two_hosts = router([{"name": "a", "domains": ["a.example"], "rules": [rule("a")]},
                        {"name": "any", "domains": ["*"], "rules": [rule("web")]}])
    exact_only = router([{"name": "any", "domains": ["*"], "rules": [rule("web", ("Exact", "/"))]}])
    assert prefixed.only is None and target(prefixed, "x", "/api/1") == "api"
    assert named.only is None and target(named, "b.example", "/") is None
    assert two_hosts.only is None and target(two_hosts, "a.example", "/") == "a"
    assert exact_only.only is None and target(exact_only, "x", "/y") is None


def named(name: str, cluster: str, *matches: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "backends": [{"cluster": cluster}]}
    if matches:
        r["matches"] = list(matches)
    return r


def picked(r: Router, path: str = "/", method: str = "GET",
           headers: tuple[tuple[str, str], ...] = ()) -> str | None:
    route = r.route(at("h", path, method, headers))
    return None if route is None else route.name


def test_precedence_exact_regex_prefix_then_method_headers_query_then_order() -> None:
    """Gateway API: Exact path > (regular expression) > longest prefix > a method match > most
    header matches > most query matches > declaration order."""
    r = router([{"name": "h", "rules": [
        named("first-root", "c", {"path": {"value": "/"}}),
        named("second-root", "c", {"path": {"value": "/"}}),
        named("query", "c", {"path": {"value": "/"},
                             "query_params": [{"name": "q", "value": "1"}]}),
        named("two-queries", "c", {"path": {"value": "/"},
                                   "query_params": [{"name": "q", "value": "1"},
                                                    {"name": "r", "value": "1"}]}),
        named("header", "c", {"path": {"value": "/"},
                              "headers": [{"name": "x", "value": "1"}],
                              "query_params": [{"name": "q", "value": "1"},
                                               {"name": "r", "value": "1"},
                                               {"name": "s", "value": "1"}]}),
        named("two-headers", "c", {"path": {"value": "/"},
                                   "headers": [{"name": "x", "value": "1"},
                                               {"name": "y", "value": "1"}]}),
        named("method", "c", {"path": {"value": "/"}, "method": "POST"}),
        named("prefix", "c", {"path": {"value": "/a"}}),
        named("regex", "c", {"path": {"type": "RegularExpression", "value": "/a/[0-9]+"}}),
        named("exact", "c", {"path": {"type": "Exact", "value": "/a/1"}}),
    ]}])
    x, y = ("x", "1"), ("y", "1")
    assert picked(r, "/a/1", "POST", (x, y)) == "exact"
    assert picked(r, "/a/2", "POST", (x, y)) == "regex"
    assert picked(r, "/a/b", "POST", (x, y)) == "prefix"
    assert picked(r, "/?q=1&r=1&s=1", "POST", (x, y)) == "method"
    assert picked(r, "/?q=1&r=1&s=1", "GET", (x, y)) == "two-headers"
    assert picked(r, "/?q=1&r=1&s=1", "GET", (x,)) == "header"
    assert picked(r, "/?q=1&r=1", "GET", (x,)) == "two-queries"
    assert picked(r, "/?q=1", "GET") == "query"
    assert picked(r, "/", "GET", (y,)) == "first-root"


def test_a_longer_prefix_beats_more_conditions() -> None:
    r = router([{"name": "h", "rules": [
        named("conditions", "c", {"path": {"value": "/"}, "method": "GET",
                                  "headers": [{"name": "x", "value": "1"}]}),
        named("longer", "c", {"path": {"value": "/api"}})]}])
    assert picked(r, "/api/x", "GET", (("x", "1"),)) == "longer"
    assert picked(r, "/other", "GET", (("x", "1"),)) == "conditions"
    assert picked(r, "/other", "GET") is None


def test_every_condition_of_a_match_must_hold_and_any_match_selects_the_rule() -> None:
    r = router([{"name": "h", "rules": [
        named("canary", "c", {"headers": [{"name": "x-canary", "value": "1"}], "method": "GET"},
              {"query_params": [{"type": "RegularExpression", "name": "v", "value": "2|3"}]}),
        named("stable", "c")]}])
    assert picked(r, "/", "GET", (("X-Canary", "1"),)) == "canary"
    assert picked(r, "/", "POST", (("X-Canary", "1"),)) == "stable"
    assert picked(r, "/x?v=3") == "canary"
    assert picked(r, "/x?v=4") == "stable"


def test_conditions_keep_the_catch_all_from_being_the_only_route() -> None:
    conditional = router([{"name": "any", "rules": [
        named("canary", "c", {"headers": [{"name": "x", "value": "1"}]}), named("web", "c")]}])
    assert conditional.only is None
    assert picked(conditional, "/", "GET", (("x", "1"),)) == "canary"
    assert picked(conditional, "/") == "web"


def test_a_table_without_conditions_tests_paths_only() -> None:
    plain = router([{"name": "h", "rules": [rule("a", ("PathPrefix", "/a")), rule("b")]}])
    host = plain.host_for("h")
    assert host is not None and host.plain
    mixed = router([{"name": "h", "rules": [
        named("m", "c", {"method": "GET"}), rule("b")]}])
    host = mixed.host_for("h")
    assert host is not None and not host.plain


def _table(rules: list[dict[str, Any]], timeout: int | None = None) -> Any:
    clusters = {b["cluster"] for r in rules for b in r["backends"]}
    raw: dict[str, Any] = {"clusters": [{"name": c} for c in sorted(clusters)],
                           "route_tables": [{"name": "rt", "virtual_hosts": [
                               {"name": "h", "rules": rules}]}]}
    return validate(raw).route_tables[0]


def test_unchanged_rules_keep_their_route_objects_across_a_rebuild() -> None:
    a, b = named("a", "ca", {"path": {"value": "/a"}}), named("b", "cb")
    first = Router(_table([a, b]), 15000)
    # The same rules, decoded again (equal, not identical), and a change to another rule.
    second = Router(_table([a, named("b", "cb2")]), 15000, previous=first)
    assert second.routes["a"] is first.routes["a"]
    assert second.routes["b"] is not first.routes["b"]
    assert second.routes["b"].clusters == ("cb2",)
    # A different default timeout changes every route that takes it.
    third = Router(_table([a, named("b", "cb2")]), 1000, previous=second)
    assert third.routes["a"] is not second.routes["a"] and third.routes["a"].timeout_ms == 1000


def test_route_state_is_keyed_by_name_and_an_unnamed_changed_rule_starts_afresh() -> None:
    named_rule = named("canary", "v1", {"path": {"value": "/a"}})
    unnamed = {"backends": [{"cluster": "web"}]}
    first = Router(_table([named_rule, unnamed]), 15000)
    first.routes["canary"].requests.value = 5
    first.routes["rt/h/1"].requests.value = 7
    # The named rule's backends change: a new Route, the same state (and count).
    changed = dict(named_rule, backends=[{"cluster": "v2"}])
    second = Router(_table([changed, {"backends": [{"cluster": "web2"}]}]), 15000,
                    previous=first)
    assert second.routes["canary"] is not first.routes["canary"]
    assert second.routes["canary"].state is first.routes["canary"].state
    assert second.routes["canary"].requests.value == 5
    # The unnamed rule's name is its position: changed, it is another route.
    assert second.routes["rt/h/1"].state is not first.routes["rt/h/1"].state
    assert second.routes["rt/h/1"].requests.value == 0
    # A renamed rule is a new route too.
    third = Router(_table([dict(changed, name="canary-2")]), 15000, previous=second)
    assert third.routes["canary-2"].requests.value == 0 and "canary" not in third.routes


def test_one_rule_under_several_hosts_is_one_route() -> None:
    r = named("shared", "c")
    raw = {"clusters": [{"name": "c"}], "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "p80", "domains": ["svc:80"], "rules": [r]},
        {"name": "p81", "domains": ["svc:81"], "rules": [r]},
        {"name": "p82", "domains": ["svc:82"], "rules": [dict(r, timeout_ms=5)]}]}]}
    router_ = Router(validate(raw).route_tables[0], 15000)
    on80, on81, on82 = (router_.route(at(f"svc:{p}", "/")) for p in (80, 81, 82))
    assert on80 is on81 is router_.routes["shared"]
    assert on82 is not None and on82 is not on80 and on82.state is on80.state
