"""Incremental router builds: a table changed in one virtual host rebuilds that host only.

Each test builds a router, changes the table the way a delta does (`apply_delta`: untouched
virtual hosts are the same structs) or the way a reload does (all structs equal, none the
same), builds the next router from the first and checks what was kept and how it routes."""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.router import Router
from tulle.proxyconfig import validate
from tulle.proxyconfig.delta import apply_delta, diff
from tulle.proxyconfig.model import ProxyConfig, RouteTable, VirtualHost


def at(authority: str, path: str = "/") -> RequestHead:
    return RequestHead(b"GET", path.encode(), authority.encode(), b"http", [])


def vhost(name: str, domains: list[str], cluster: str, rule: str | None = None,
          weight: int = 1) -> dict[str, Any]:
    r: dict[str, Any] = {"backends": [{"cluster": cluster, "weight": weight}]}
    if rule is not None:
        r["name"] = rule
    return {"name": name, "domains": domains, "rules": [r]}


def snapshot(hosts: list[dict[str, Any]], version: str = "v1") -> ProxyConfig:
    return validate({"version": version, "clusters": [{"name": c} for c in ("a", "b", "c")],
                     "route_tables": [{"name": "rt", "virtual_hosts": hosts}]})


def hosts() -> list[dict[str, Any]]:
    return [vhost("exact", ["svc.ns", "svc.ns:80"], "a", "exact-rule"),
            vhost("suffix", ["*.example.com"], "a"),
            vhost("prefix", ["api.*"], "b"),
            vhost("canary", ["canary.ns"], "a", "canary-rule"),
            vhost("any", ["*"], "c")]


def step(base: ProxyConfig, target: list[dict[str, Any]]) -> ProxyConfig:
    """`target` as the agent gets it: a delta applied to `base` (untouched hosts shared)."""
    return apply_delta(base, diff(base, snapshot(target, version=base.version + "+")))


def cluster_for(r: Router, authority: str, path: str = "/") -> str | None:
    route = r.route(at(authority, path))
    return None if route is None else route.pick_cluster()


def test_an_untouched_host_keeps_its_compiled_objects_and_route_state() -> None:
    base = snapshot(hosts())
    first = Router(base.route_tables[0], 15000)
    first.routes["canary-rule"].requests.value = 4
    first.routes["exact-rule"].requests.value = 9
    target = hosts()
    target[3] = vhost("canary", ["canary.ns"], "b", "canary-rule", weight=3)
    new = step(base, target)
    assert new.route_tables[0].virtual_hosts[0] is base.route_tables[0].virtual_hosts[0]
    second = Router(new.route_tables[0], 15000, previous=first)
    assert second.compiled.kept == 4
    for old_e, new_e in zip(first.compiled.entries, second.compiled.entries, strict=True):
        if old_e.vh.name == "canary":
            assert new_e is not old_e and new_e.host is not old_e.host
        else:  # the entry, its compiled host, sorted matches and Route objects: all the same
            assert new_e is old_e
    assert second.routes["exact-rule"] is first.routes["exact-rule"]
    assert second.routes["exact-rule"].requests.value == 9
    # The changed host's named rule: a new Route with the old state.
    assert second.routes["canary-rule"] is not first.routes["canary-rule"]
    assert second.routes["canary-rule"].state is first.routes["canary-rule"].state
    assert cluster_for(second, "canary.ns") == "b" and cluster_for(first, "canary.ns") == "a"
    assert cluster_for(second, "svc.ns:80") == "a"
    assert first.routes.keys() == second.routes.keys()


def test_a_removed_host_disappears_from_lookup_exact_wildcards_and_any() -> None:
    base = snapshot(hosts())
    r = Router(base.route_tables[0], 15000)
    assert [cluster_for(r, a) for a in ("svc.ns", "x.example.com", "api.internal", "z")] == [
        "a", "a", "b", "c"]
    current = base
    for gone, authority, now in (("exact", "svc.ns", "c"), ("suffix", "x.example.com", "c"),
                                 ("prefix", "api.internal", "c"), ("any", "z", None)):
        target = [h for h in msgspec.to_builtins(current.route_tables[0].virtual_hosts)
                  if h["name"] != gone]
        current = step(current, target)
        r = Router(current.route_tables[0], 15000, previous=r)
        assert cluster_for(r, authority) == now, gone
        assert r.compiled.kept == len(target)
        assert not any(e.vh.name == gone for e in r.compiled.entries)
    # Everything but the canary host is gone; with no `*` host any other authority is a 404.
    assert cluster_for(r, "canary.ns") == "a" and cluster_for(r, "svc.ns") is None


def test_a_host_whose_domains_change_moves_in_the_lookup() -> None:
    base = snapshot(hosts())
    first = Router(base.route_tables[0], 15000)
    target = hosts()
    target[1] = vhost("suffix", ["*.example.org", "exact.example.com"], "b")
    target[4] = vhost("any", ["api.internal"], "c")  # `*` becomes an exact name
    second = Router(step(base, target).route_tables[0], 15000, previous=first)
    assert cluster_for(second, "x.example.com") is None  # no `*` left
    assert cluster_for(second, "x.example.org") == "b"
    assert cluster_for(second, "exact.example.com") == "b"
    assert cluster_for(second, "api.internal") == "c"  # exact beats the `api.*` prefix
    assert cluster_for(second, "api.other") == "b"
    assert second.only is None and second.compiled.kept == 3


def test_a_snapshot_decoded_anew_keeps_every_host_by_equality() -> None:
    base = snapshot(hosts())
    first = Router(base.route_tables[0], 15000)
    again = msgspec.json.decode(msgspec.json.encode(base.route_tables[0]), type=RouteTable)
    assert again.virtual_hosts[0] is not base.route_tables[0].virtual_hosts[0]
    second = Router(again, 15000, previous=first)
    assert second.compiled.kept == 5
    assert all(a is b for a, b in zip(first.compiled.entries, second.compiled.entries,
                                      strict=True))


def test_a_new_default_timeout_compiles_every_host_but_keeps_named_state() -> None:
    base = snapshot(hosts())
    first = Router(base.route_tables[0], 15000)
    first.routes["exact-rule"].requests.value = 2
    second = Router(base.route_tables[0], 1000, previous=first)
    assert second.compiled.kept == 0
    assert second.routes["exact-rule"].timeout_ms == 1000
    assert second.routes["exact-rule"].requests.value == 2


def test_hosts_that_move_or_share_a_rule_name_take_the_ordered_walk() -> None:
    """Reordered hosts, and a rule name two hosts share: still kept by identity, still exact."""
    shared = [vhost("p80", ["svc:80"], "a", "shared"), vhost("p81", ["svc:81"], "a", "shared"),
              vhost("other", ["other"], "b", "other")]
    base = snapshot(shared)
    first = Router(base.route_tables[0], 15000)
    assert first.compiled.shared == frozenset({"shared"})
    assert first.route(at("svc:80")) is first.route(at("svc:81"))
    # p81's rule changes: the shared name's state stays one, and p80 keeps its Route.
    changed = [shared[0], vhost("p81", ["svc:81"], "b", "shared"), shared[2]]
    second = Router(step(base, changed).route_tables[0], 15000, previous=first)
    on80, on81 = second.route(at("svc:80")), second.route(at("svc:81"))
    assert on80 is first.route(at("svc:80"))
    assert on81 is not None and on80 is not None and on81.clusters == ("b",)
    assert on81.state is on80.state
    # Moved: the hosts in another order, the same structs.
    vhs = list(second.compiled.vhs)
    moved = msgspec.structs.replace(base.route_tables[0], virtual_hosts=vhs[::-1])
    third = Router(moved, 15000, previous=second)
    assert third.compiled.kept == 3
    assert cluster_for(third, "other") == "b" and cluster_for(third, "svc:81") == "b"


def test_a_domain_two_hosts_claim_goes_to_the_first_whatever_changed() -> None:
    base = snapshot([vhost("one", ["dup.ns"], "a"), vhost("two", ["dup.ns", "two.ns"], "b")])
    first = Router(base.route_tables[0], 15000)
    assert cluster_for(first, "dup.ns") == "a"
    # The first claimant goes: the second takes the domain over.
    second = Router(step(base, [vhost("two", ["dup.ns", "two.ns"], "b")]).route_tables[0],
                    15000, previous=first)
    assert cluster_for(second, "dup.ns") == "b"
    # A host added before it claims the domain again.
    vhs: list[VirtualHost] = [msgspec.convert(vhost("zero", ["dup.ns"], "c"), VirtualHost),
                              *second.compiled.vhs]
    third = Router(RouteTable(name="rt", virtual_hosts=vhs), 15000, previous=second)
    assert cluster_for(third, "dup.ns") == "c" and cluster_for(third, "two.ns") == "b"


def test_a_host_that_comes_or_goes_is_spliced_in_without_a_walk() -> None:
    base = snapshot(hosts())
    first = Router(base.route_tables[0], 15000)
    target = hosts()
    target.insert(2, vhost("new", ["new.ns"], "b"))
    grown = step(base, target)
    second = Router(grown.route_tables[0], 15000, previous=first)
    assert second.compiled.kept == 5 and second.compiled.touched == {"rt/new/0"}
    assert [e.vh.name for e in second.compiled.entries] == [h["name"] for h in target]
    assert cluster_for(second, "new.ns") == "b" and cluster_for(second, "other") == "c"
    del target[0]
    third = Router(step(grown, target).route_tables[0], 15000, previous=second)
    assert third.compiled.kept == 5 and third.compiled.touched == {"exact-rule"}
    assert cluster_for(third, "svc.ns") == "c" and "exact-rule" not in third.routes
