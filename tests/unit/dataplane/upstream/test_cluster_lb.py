"""The cluster runtime's side of load balancing: the balancer built from `lb_policy` and `lb`,
slow start stamped on endpoints that join (not on a new cluster's), the node's zone reaching
the balancer (a zone change rebuilds), and the request's hash key computed from the head."""

from __future__ import annotations

from typing import Any

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager, ClusterRuntime
from tulle.dataplane.upstream.lb_hash import Maglev
from tulle.dataplane.upstream.lb_load import PeakEwma
from tulle.dataplane.upstream.lb_zone import Zoned
from tulle.proxyconfig import validate
from tulle.proxyconfig.model import Cluster, Settings

SETTINGS = Settings()


def cluster(*ports: int, policy: str = "peak_ewma", lb: dict[str, Any] | None = None,
            zones: tuple[str, ...] = ()) -> Cluster:
    raw: dict[str, Any] = {"name": "c", "lb_policy": policy, "endpoints": [
        {"address": "127.0.0.1", "port": p, "zone": zones[i] if zones else ""}
        for i, p in enumerate(ports)]}
    if lb is not None:
        raw["lb"] = lb
    return validate({"clusters": [raw]}).clusters[0]


def swap(m: ClusterManager, c: Cluster, zone: str = "") -> ClusterRuntime:
    prepared = m.prepare([c], SETTINGS, zone)
    m.commit(prepared)
    return m.clusters["c"]


async def test_the_balancer_follows_the_policy_and_joining_endpoints_start_slow() -> None:
    m = ClusterManager(ProxyMetrics())
    rt = swap(m, cluster(1, 2, lb={"slow_start_window_ms": 30_000}))
    assert isinstance(rt.lb, PeakEwma)
    assert [e.added for e in rt.endpoints] == [0.0, 0.0]  # a new cluster: nothing to warm
    rt = swap(m, cluster(1, 2, 3, lb={"slow_start_window_ms": 30_000}))  # endpoints only
    assert [e.added > 0 for e in rt.endpoints] == [False, False, True]
    assert rt.lb_options.slow_start == 30.0


async def test_the_node_zone_reaches_the_balancer_and_a_change_rebuilds() -> None:
    m = ClusterManager(ProxyMetrics())
    c = cluster(1, 2, lb={"locality_aware": True}, zones=("a", "b"))
    rt = swap(m, c, zone="a")
    assert isinstance(rt.lb, Zoned) and rt.lb_options.local_zone == "a"
    assert {rt.pick().port for _ in range(50)} == {1}  # type: ignore[union-attr]
    again = swap(m, c, zone="b")
    assert again is not rt and {again.pick().port for _ in range(50)} == {2}  # type: ignore[union-attr]


async def test_a_hashing_cluster_keys_each_request_by_its_head() -> None:
    m = ClusterManager(ProxyMetrics())
    rt = swap(m, cluster(1, 2, 3, 4, policy="maglev",
                         lb={"hash_policies": [{"type": "header", "name": "x-user"}]}))
    assert isinstance(rt.lb, Maglev) and rt.hash_policies is not None
    picked: dict[bytes, set[int | None]] = {}
    spy = _Spy(rt.lb)
    rt.lb = spy
    for user in (b"a", b"b", b"c"):
        for _ in range(3):
            head = RequestHead(b"GET", b"/", b"c", b"http", [(b"x-user", user)])
            assert rt.open_stream(head, _Sink(), True) is None  # type: ignore[arg-type]
            picked.setdefault(user, set()).add(spy.keys[-1])
    assert all(len(keys) == 1 and None not in keys for keys in picked.values())
    assert len({next(iter(k)) for k in picked.values()}) == 3
    rt.hash_policies = None  # a cluster that does not hash computes nothing
    rt.open_stream(RequestHead(b"GET", b"/", b"c", b"http", [(b"x-user", b"a")]),
                   _Sink(), True)  # type: ignore[arg-type]
    assert spy.keys[-1] is None


class _Spy:
    """Records the keys the cluster passes; picks nothing (no connection is opened)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.keys: list[int | None] = []

    def pick(self, key: int | None = None, avoid: Any = ()) -> None:
        self.keys.append(key)

    def set_endpoints(self, endpoints: Any) -> None:
        pass


class _Sink:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class _Pool:
    """Records that a try was opened on it (no connection)."""

    def __init__(self) -> None:
        self.opened = 0

    def open_stream(self, head: Any, sink: Any, end: bool) -> Any:
        self.opened += 1
        return _Sink()


async def test_a_preferred_endpoint_takes_the_try_while_healthy_and_not_avoided() -> None:
    from tulle.dataplane.upstream.attempt import AttemptRequest

    m = ClusterManager(ProxyMetrics())
    rt = swap(m, cluster(1, 2, 3))
    pools = {e.key: _Pool() for e in rt.endpoints}
    rt.pools = pools  # type: ignore[assignment]
    spy = _Spy(rt.lb)
    rt.lb = spy
    head = RequestHead(b"GET", b"/", b"c", b"http", [])
    two = rt.endpoints[1]
    for _ in range(5):
        rt.open_stream(head, _Sink(), True, AttemptRequest(prefer=two))  # type: ignore[arg-type]
    assert pools[two.key].opened == 5 and spy.keys == []  # the balancer was not asked
    rt.open_stream(head, _Sink(), True,  # type: ignore[arg-type]
                   AttemptRequest(prefer=two, avoid=(two,)))  # a retry leaves it
    two.healthy = False
    rt.open_stream(head, _Sink(), True, AttemptRequest(prefer=two))  # type: ignore[arg-type]
    assert pools[two.key].opened == 5 and len(spy.keys) == 2
