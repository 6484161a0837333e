"""ClusterManager.prepare/commit: what a swap carries over (endpoint state, pools) and what it
winds down.  Real H1Pool objects; no connection is ever opened (the tests are async only
because pools may expect a running loop)."""

from __future__ import annotations

from typing import Any

from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager, ClusterRuntime
from tulle.dataplane.upstream.http1 import H1Pool
from tulle.proxyconfig.model import Cluster, ClusterLimits, Endpoint, Settings

SETTINGS = Settings()


def cluster(name: str, *ports: int, **kw: Any) -> Cluster:
    return Cluster(name=name, endpoints=[Endpoint(address="127.0.0.1", port=p) for p in ports],
                   **kw)


def weighted(name: str, weights: dict[int, int]) -> Cluster:
    return Cluster(name=name, endpoints=[Endpoint(address="127.0.0.1", port=p, weight=w)
                                         for p, w in weights.items()])


def swap(m: ClusterManager, *clusters: Cluster) -> dict[str, ClusterRuntime]:
    new = m.prepare(clusters, SETTINGS)
    m.commit(new)
    return new.runtimes


def pools_of(rt: ClusterRuntime) -> dict[str, H1Pool]:
    """Open (lazily create) a pool for every endpoint, as requests would."""
    out = {}
    for ep in rt.endpoints:
        pool = rt.pool_for(ep)
        assert isinstance(pool, H1Pool)
        out[ep.key] = pool
    return out


async def test_prepare_changes_nothing_in_force() -> None:
    m = ClusterManager(ProxyMetrics())
    first = swap(m, cluster("a", 1001))
    prepared = m.prepare([cluster("a", 1002), cluster("b", 2001)], SETTINGS)
    assert m.clusters is first
    assert [e.key for e in m.clusters["a"].endpoints] == ["127.0.0.1:1001"]
    assert set(prepared.runtimes) == {"a", "b"}


async def test_pools_and_endpoint_state_carry_over_by_cluster_name() -> None:
    m = ClusterManager(ProxyMetrics())
    old = swap(m, cluster("a", 1001, 1002))["a"]
    old_pools = pools_of(old)
    old.endpoints[1].healthy = False  # e.g. outlier detection ejected it

    new = swap(m, cluster("a", 1001, 1002, connect_timeout_ms=50))["a"]

    assert new is not old
    assert new.connect_timeout == 0.05
    assert new.endpoints[0] is old.endpoints[0]
    assert new.endpoints[1].healthy is False
    assert new.pools == old_pools
    for pool in old_pools.values():
        assert pool.cluster is new  # later connections use the new snapshot's settings
        assert not pool.closed


async def test_removed_endpoints_and_clusters_have_their_pools_closed() -> None:
    m = ClusterManager(ProxyMetrics())
    before = swap(m, cluster("a", 1001, 1002), cluster("b", 2001))
    a, b = pools_of(before["a"]), pools_of(before["b"])

    after = swap(m, cluster("a", 1001, 1003))

    assert set(after) == {"a"}
    assert not a["127.0.0.1:1001"].closed
    assert a["127.0.0.1:1002"].closed
    assert b["127.0.0.1:2001"].closed
    assert set(after["a"].pools) == {"127.0.0.1:1001"}  # 1003 gets a pool on first use


async def test_a_protocol_change_does_not_carry_pools() -> None:
    m = ClusterManager(ProxyMetrics())
    old_pools = pools_of(swap(m, cluster("a", 1001))["a"])
    new = swap(m, cluster("a", 1001, protocol="tcp"))["a"]
    assert new.pools == {}
    assert old_pools["127.0.0.1:1001"].closed


async def test_a_pool_opened_between_prepare_and_commit_is_carried_over() -> None:
    m = ClusterManager(ProxyMetrics())
    old = swap(m, cluster("a", 1001))["a"]
    prepared = m.prepare([cluster("a", 1001)], SETTINGS)
    late = pools_of(old)["127.0.0.1:1001"]  # a request on the old snapshot, mid-swap
    m.commit(prepared)
    assert m.clusters["a"].pools["127.0.0.1:1001"] is late
    assert not late.closed


async def test_new_weights_take_effect_on_carried_endpoints() -> None:
    m = ClusterManager(ProxyMetrics())
    swap(m, weighted("a", {1001: 1, 1002: 1}))
    new = swap(m, weighted("a", {1001: 3, 1002: 1}))["a"]
    picks = [new.pick() for _ in range(8)]
    assert sum(1 for e in picks if e is not None and e.port == 1001) == 6


async def test_limit_counters_carry_over_by_name_and_thresholds_change_at_commit() -> None:
    m = ClusterManager(ProxyMetrics())
    old = swap(m, cluster("a", 1001))["a"]
    old.limits.requests = 3  # in flight when the config changes
    prepared = m.prepare([cluster("a", 1001, limits=ClusterLimits(max_requests=5))], SETTINGS)
    new = prepared.runtimes["a"]
    assert new is not old and new.limits is old.limits
    assert old.limits.max_requests == 1024  # prepare changes nothing in force
    m.commit(prepared)
    assert (new.limits.requests, new.limits.max_requests) == (3, 5)
    gone = swap(m, cluster("b", 2001))
    back = swap(m, cluster("a", 1001), cluster("b", 2001))["a"]
    assert "a" not in gone and back.limits is not old.limits  # removed: counted afresh


async def test_an_outcome_subscriber_reaches_current_and_future_runtimes() -> None:
    m = ClusterManager(ProxyMetrics())
    a = swap(m, cluster("a", 1001))["a"]

    def hook(*args: object) -> None: ...

    m.subscribe(hook)
    assert a.on_outcome is hook
    b = swap(m, cluster("a", 1001, connect_timeout_ms=5), cluster("b", 2001))
    assert b["a"].on_outcome is hook and b["b"].on_outcome is hook
