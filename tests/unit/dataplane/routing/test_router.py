"""The compiled router: host lookup order, Gateway API path precedence, weighted backends."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from tulle.dataplane.routing.router import Router
from tulle.proxyconfig import validate


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
    route = r.route(authority, path)
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
    assert r.route("b", "/") is None


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
    assert r.route("h", "/other") is None


def test_timeouts_default_and_override() -> None:
    r = router([{"name": "h", "rules": [rule("slow", ("PathPrefix", "/slow"), timeout_ms=0),
                                         rule("other")]}])
    slow = r.route("h", "/slow")
    other = r.route("h", "/x")
    assert slow is not None and slow.timeout_ms == 0
    assert other is not None and other.timeout_ms == 15000


def test_weighted_backends_split_by_weight() -> None:
    r = router([{"name": "h", "rules": [{"backends": [
        {"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10},
        {"cluster": "off", "weight": 0}]}]}])
    route = r.route("h", "/")
    assert route is not None
    rng = random.Random(7)
    counts = Counter(route.pick_cluster(rng) for _ in range(10_000))
    assert set(counts) == {"v1", "v2"}
    assert 850 <= counts["v2"] <= 1150


def test_a_table_with_one_catch_all_rule_needs_no_lookup() -> None:
    only = router([{"name": "any", "domains": ["*"], "rules": [rule("web")]}])
    assert only.only is not None and only.only is only.route("anything:8080", "/x?y")
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
