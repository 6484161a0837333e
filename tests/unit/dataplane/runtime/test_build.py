"""The incremental snapshot build: what a swap keeps (by identity) and what it rebuilds.

Each test applies two snapshots through `SnapshotBuilder.prepare/commit` (what
`ProxyServer.apply` does, without sockets) and checks which runtime objects survived.  Pools are
real `H1Pool`s that never dial (async tests only because pools expect a running loop)."""

from __future__ import annotations

import copy
from typing import Any

from tulle.dataplane.runtime.build import Prepared, SnapshotBuilder
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager, ClusterRuntime
from tulle.dataplane.upstream.http1 import H1Pool
from tulle.proxyconfig import validate
from tulle.proxyconfig.delta import apply_delta, diff
from tulle.proxyconfig.model import ProxyConfig


def raw(n: int = 3, version: str = "v1") -> dict[str, Any]:
    """`n` clusters of two endpoints each, a route table per cluster, two listeners."""
    return {
        "version": version,
        "listeners": [
            {"name": "out", "port": 0, "route_table": "rt0"},
            {"name": "tcp", "port": 0, "protocol": "tcp", "cluster": f"c{n - 1}"},
        ],
        "route_tables": [{"name": f"rt{i}", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": f"c{i}"}]}]}]}
            for i in range(n)],
        "clusters": [{"name": f"c{i}", "endpoints": [
            {"address": "127.0.0.1", "port": 1000 + 10 * i + j} for j in range(2)]}
            for i in range(n)],
    }


def builder() -> SnapshotBuilder:
    metrics = ProxyMetrics()
    return SnapshotBuilder(metrics, ClusterManager(metrics))


def swap(b: SnapshotBuilder, cfg: ProxyConfig | dict[str, Any]) -> Prepared:
    p = b.prepare(cfg if isinstance(cfg, ProxyConfig) else validate(cfg))
    b.commit(p)
    return p


def pools_of(rt: ClusterRuntime) -> dict[str, H1Pool]:
    out = {}
    for ep in rt.endpoints:
        pool = rt.pool_for(ep)
        assert isinstance(pool, H1Pool)
        out[ep.key] = pool
    return out


async def test_an_identical_snapshot_keeps_every_runtime_object() -> None:
    b = builder()
    first = swap(b, raw())
    pools = pools_of(first.clusters.runtimes["c0"])
    # Decoded anew (equal, not identical structs), as a file reload or SIGHUP gives it.
    second = swap(b, raw(version="v2"))
    assert second.clusters.runtimes is first.clusters.runtimes
    assert all(second.routers[n][2] is first.routers[n][2] for n in first.routers)
    assert second.contexts == first.contexts
    assert all(second.contexts[n] is first.contexts[n] for n in first.contexts)
    assert pools_of(second.clusters.runtimes["c0"]) == pools
    assert not any(p.closed for p in pools.values())
    assert second.counts.routers_built == second.counts.clusters_built == 0
    assert second.counts.contexts_built == 0


async def test_an_endpoint_change_swaps_the_balancer_list_and_keeps_surviving_pools() -> None:
    b = builder()
    first = swap(b, raw())
    rt = first.clusters.runtimes["c2"]
    pools = pools_of(rt)
    survivor = rt.endpoints[0]
    survivor.healthy = False  # state outlier detection would have set
    changed = raw(version="v2")
    changed["clusters"][2]["endpoints"][1]["port"] = 1099  # 1021 leaves, 1099 arrives

    second = swap(b, changed)

    assert second.clusters.runtimes is first.clusters.runtimes  # same dict, same objects
    assert second.clusters.runtimes["c2"] is rt
    assert [e.key for e in rt.endpoints] == ["127.0.0.1:1020", "127.0.0.1:1099"]
    assert rt.endpoints[0] is survivor and survivor.healthy is False
    assert rt.pools["127.0.0.1:1020"] is pools["127.0.0.1:1020"]
    assert not pools["127.0.0.1:1020"].closed
    assert pools["127.0.0.1:1021"].closed
    assert "127.0.0.1:1021" not in rt.pools
    assert rt.cfg.endpoints[1].port == 1099
    assert rt.pick() is rt.endpoints[1]  # the balancer has the new list (1020 is unhealthy)
    # Nothing else was rebuilt: routers, listener contexts.
    assert second.counts == type(second.counts)(
        routers_built=0, routers_kept=3, clusters_built=0, clusters_kept=2,
        clusters_endpoints_changed=1, contexts_built=0, contexts_kept=2)
    assert all(second.contexts[n] is first.contexts[n] for n in first.contexts)


async def test_an_endpoint_change_is_not_in_force_before_commit() -> None:
    b = builder()
    first = swap(b, raw())
    rt = first.clusters.runtimes["c0"]
    changed = raw(version="v2")
    changed["clusters"][0]["endpoints"].pop()
    prepared = b.prepare(validate(changed))
    assert len(rt.endpoints) == 2 and len(rt.cfg.endpoints) == 2
    b.commit(prepared)
    assert len(rt.endpoints) == 1


async def test_weights_of_an_endpoint_change_take_effect() -> None:
    b = builder()
    swap(b, raw(1))
    changed = raw(1, version="v2")
    changed["clusters"][0]["endpoints"][0]["weight"] = 3
    rt = swap(b, changed).clusters.runtimes["c0"]
    picks = [rt.pick() for _ in range(8)]
    assert sum(1 for e in picks if e is not None and e.port == 1000) == 6


async def test_a_removed_cluster_is_drained_and_the_others_kept() -> None:
    b = builder()
    first = swap(b, raw())
    gone = pools_of(first.clusters.runtimes["c2"])
    kept = pools_of(first.clusters.runtimes["c0"])
    smaller = raw(version="v2")
    del smaller["clusters"][2]
    del smaller["route_tables"][2]
    smaller["listeners"][1]["cluster"] = "c1"

    second = swap(b, smaller)

    assert set(second.clusters.runtimes) == {"c0", "c1"}
    assert second.clusters.runtimes["c0"] is first.clusters.runtimes["c0"]
    assert all(p.closed for p in gone.values())
    assert not any(p.closed for p in kept.values())
    # The cluster map changed, so contexts (which cache decisions holding runtimes) are new.
    assert second.counts.contexts_built == 2


async def test_a_changed_cluster_setting_builds_a_new_runtime_keeping_compatible_pools() -> None:
    b = builder()
    first = swap(b, raw())
    old = first.clusters.runtimes["c1"]
    pools = pools_of(old)
    changed = raw(version="v2")
    changed["clusters"][1]["connect_timeout_ms"] = 50
    second = swap(b, changed)
    new = second.clusters.runtimes["c1"]
    assert new is not old and new.connect_timeout == 0.05
    assert new.pools == pools and all(p.cluster is new for p in pools.values())
    assert second.clusters.runtimes["c0"] is first.clusters.runtimes["c0"]
    assert second.counts.clusters_built == 1 and second.counts.clusters_kept == 2


async def test_only_changed_route_tables_are_rebuilt_and_only_their_listeners() -> None:
    b = builder()
    first = swap(b, raw())
    changed = raw(version="v2")
    changed["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"][0]["cluster"] = "c2"
    second = swap(b, changed)
    assert second.routers["rt0"][2] is not first.routers["rt0"][2]
    assert second.routers["rt1"][2] is first.routers["rt1"][2]
    assert second.contexts["out"] is not first.contexts["out"]  # it routes by rt0
    assert second.contexts["tcp"] is first.contexts["tcp"]
    assert second.contexts["out"].router is second.routers["rt0"][2]


async def test_a_settings_change_rebuilds_what_copies_settings() -> None:
    b = builder()
    first = swap(b, raw())
    changed = raw(version="v2")
    changed["settings"] = {"max_response_header_bytes": 32_768}
    second = swap(b, changed)
    assert all(second.clusters.runtimes[n] is not first.clusters.runtimes[n]
               for n in first.clusters.runtimes)
    assert second.clusters.runtimes["c0"].max_response_header_bytes == 32_768


async def test_a_delta_applied_snapshot_is_compared_by_identity() -> None:
    """The agent's path: `apply_delta` shares unchanged structs, so most compares are `is`."""
    b = builder()
    base = validate(raw(version="v1"))
    swap(b, base)
    target = copy.deepcopy(raw(version="v2"))
    target["clusters"][0]["endpoints"].append({"address": "127.0.0.1", "port": 1009})
    new = apply_delta(base, diff(base, validate(target)))
    assert new.clusters[1] is base.clusters[1] and new.route_tables[0] is base.route_tables[0]
    p = swap(b, new)
    assert p.counts.clusters_endpoints_changed == 1 and p.counts.clusters_kept == 2
    assert p.counts.contexts_built == 0


async def test_delta_units_keep_untouched_structs_and_runtime_objects() -> None:
    """A virtual-host patch rebuilds the one table's router; an endpoint patch keeps the
    cluster's runtime and swaps its endpoints; everything else is kept by identity."""
    b = builder()
    start = raw(version="v1")
    start["route_tables"][1]["virtual_hosts"].append(
        {"name": "other", "domains": ["other"], "rules": [{"backends": [{"cluster": "c0"}]}]})
    base = validate(start)
    first = swap(b, base)
    target = copy.deepcopy(start)
    target["version"] = "v2"
    target["route_tables"][1]["virtual_hosts"][0]["rules"][0]["backends"][0]["weight"] = 3
    target["clusters"][2]["endpoints"].pop()
    d = diff(base, validate(target))
    assert [v.route_table for v in d.virtual_hosts] == ["rt1"]
    assert [e.cluster for e in d.endpoints] == ["c2"]
    assert not d.route_tables.upsert and not d.clusters.upsert
    new = apply_delta(base, d)
    assert new.route_tables[1].virtual_hosts[1] is base.route_tables[1].virtual_hosts[1]
    assert new.clusters[2] is not base.clusters[2] and new.clusters[0] is base.clusters[0]
    p = swap(b, new)
    assert p.counts.routers_built == 1 and p.counts.routers_kept == 2
    assert p.routers["rt0"] is first.routers["rt0"]
    assert p.counts.clusters_endpoints_changed == 1 and p.counts.clusters_built == 0
    assert all(p.clusters.runtimes[n] is first.clusters.runtimes[n] for n in ("c0", "c1", "c2"))
    assert [e.port for e in p.clusters.runtimes["c2"].endpoints] == [1020]


def _many_hosts(weight: int, extra: bool = False) -> dict[str, Any]:
    """rt0 with ten virtual hosts (one with a named rule whose weight varies), `extra` an
    eleventh."""
    start = raw(version=f"w{weight}{'+' if extra else ''}")
    hosts = [{"name": f"h{i}", "domains": [f"h{i}.ns", f"*.h{i}.ns"],
              "rules": [{"backends": [{"cluster": "c1"}]}]} for i in range(10)]
    hosts[3]["rules"] = [{"name": "canary", "backends": [{"cluster": "c1", "weight": weight},
                                                          {"cluster": "c2"}]}]
    if extra:
        hosts.append({"name": "h10", "domains": ["h10.ns"],
                      "rules": [{"backends": [{"cluster": "c0"}]}]})
    start["route_tables"][0]["virtual_hosts"] = hosts
    return start


def _full_export(p: Prepared) -> dict[tuple[str, ...], object]:
    return {(t, name): route.requests for t, (_, _, r) in p.routers.items()
            for name, route in r.routes.items()}


async def test_a_canary_change_compiles_one_host_and_keeps_the_clusters_in_force() -> None:
    b = builder()
    base = validate(_many_hosts(1))
    first = swap(b, base)
    first.routers["rt0"][2].routes["canary"].requests.value = 3
    new = apply_delta(base, diff(base, validate(_many_hosts(3))))
    p = swap(b, new)
    assert p.counts.routers_built == 1 and p.counts.hosts_built == 1
    assert p.counts.hosts_kept == 9
    old_r, new_r = first.routers["rt0"][2], p.routers["rt0"][2]
    assert all((a is c) == (a.vh.name != "h3")
               for a, c in zip(old_r.compiled.entries, new_r.compiled.entries, strict=True))
    assert new_r.routes["rt0/h5/0"] is old_r.routes["rt0/h5/0"]
    assert new_r.routes["canary"].requests.value == 3 and new_r.routes["canary"]._total == 4
    # No cluster changed: the runtimes in force, not a compare of each one.
    assert p.clusters.runtimes is first.clusters.runtimes and p.counts.clusters_kept == 3
    assert p.contexts["tcp"] is first.contexts["tcp"]
    assert b.metrics.route_requests.children == _full_export(p)


async def test_route_series_follow_patched_and_rebuilt_routers() -> None:
    """The series are patched by route name; after hosts come and go (and a reload builds
    by the ordered walk) they are what a full export would give."""
    b = builder()
    current = validate(_many_hosts(1))
    swap(b, current)
    for target in (_many_hosts(1, extra=True), _many_hosts(2), _many_hosts(5, extra=True)):
        current = apply_delta(current, diff(current, validate(target)))
        p = swap(b, current)
        assert b.metrics.route_requests.children == _full_export(p)
    assert ("rt0", "rt0/h10/0") in b.metrics.route_requests.children
    # In place (a patched router): an unnamed rule changed (a new route, new state) and a host
    # renamed at its position.
    target = _many_hosts(5, extra=True)
    hosts = target["route_tables"][0]["virtual_hosts"]
    hosts[5]["rules"][0]["backends"][0]["cluster"] = "c2"
    hosts[7]["name"] = "h7b"
    current = apply_delta(current, diff(current, validate(target)))
    p = swap(b, current)
    assert p.counts.hosts_built == 2 and p.routers["rt0"][2].compiled.touched == {
        "rt0/h5/0", "rt0/h7/0", "rt0/h7b/0"}
    assert b.metrics.route_requests.children == _full_export(p)
    assert ("rt0", "rt0/h7/0") not in b.metrics.route_requests.children
    reordered = _many_hosts(5)
    reordered["route_tables"][0]["virtual_hosts"].reverse()
    p = swap(b, reordered)
    # Kept by equality (decoded anew), but for h5 and h7, which go back to what they were.
    assert p.counts.hosts_kept == 8 and p.counts.hosts_built == 2
    assert b.metrics.route_requests.children == _full_export(p)
    assert ("rt0", "rt0/h10/0") not in b.metrics.route_requests.children
    gone = _many_hosts(5)
    gone["route_tables"] = gone["route_tables"][1:]
    gone["listeners"] = gone["listeners"][1:]
    p = swap(b, gone)
    assert b.metrics.route_requests.children == _full_export(p)
    assert not any(t == "rt0" for t, _ in b.metrics.route_requests.children)
