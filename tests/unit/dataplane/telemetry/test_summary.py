"""The proxy's traffic summaries: deltas of its own metrics, grouped by edge."""

from __future__ import annotations

import msgspec

from tulle.dataplane.listeners.request_stats import RequestStats
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.summary import Summarizer
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stats import StatsRow

CFG = msgspec.convert({
    "version": "1",
    "node": {"name": "a-0", "namespace": "shop", "service": "a"},
    "listeners": [
        {"name": "outbound", "address": "127.0.0.1", "port": 15001, "direction": "outbound",
         "route_table": "outbound"},
        {"name": "inbound|8080", "address": "127.0.0.1", "port": 18080, "direction": "inbound",
         "cluster": "inbound|8080"},
    ],
    "clusters": [
        {"name": "outbound|80||api.shop", "metadata": {"service": "api", "namespace": "shop"}},
        {"name": "inbound|8080"},
        {"name": "passthrough"},
    ],
}, ProxyConfig)


def test_rows_are_deltas_grouped_by_edge() -> None:
    m = ProxyMetrics()
    out = RequestStats(m, "outbound", "outbound|80||api.shop")
    inbound = RequestStats(m, "inbound|8080", "inbound|8080")
    s = Summarizer(m)
    assert s.report(CFG) == []
    for _ in range(8):
        out.count(200, "", 3.0)
    out.count(503, "UH", 0.2)
    out.count(0, "UF", 40.0)  # no response at all: a failure
    inbound.count(200, "", 7.0)
    RequestStats(m, "outbound", "passthrough").count(200, "", 1.0)  # no Service: not shown
    m.upstream_connections_active.labels("outbound|80||api.shop").value = 2
    m.connections_active.labels("inbound|8080").value = 1
    rows = {(r.direction, r.workload, r.service): r for r in s.report(CFG)}
    assert set(rows) == {("outbound", "shop/a-0", "shop/api"), ("inbound", "shop/a-0", "shop/a")}
    o = rows[("outbound", "shop/a-0", "shop/api")]
    assert (o.requests, o.failures, o.tcp_open) == (10, 2, 2)
    assert dict(o.buckets) == {0: 1, 2: 8, 5: 1}  # (0, 0.5], (1, 5], (25, 50]
    assert o.latency_sum_ms == 8 * 3.0 + 0.2 + 40.0
    i = rows[("inbound", "shop/a-0", "shop/a")]
    assert (i.requests, i.failures, i.tcp_open, i.buckets) == (1, 0, 1, [(3, 1)])
    # Nothing new: only the gauges remain; counts are never reported twice.
    again = {(r.direction, r.service): r for r in s.report(CFG)}
    assert again[("outbound", "shop/api")].requests == 0
    assert again[("outbound", "shop/api")].tcp_open == 2
    out.count(200, "", 3.0)
    (o2,) = [r for r in s.report(CFG) if r.direction == "outbound"]
    assert (o2.requests, o2.buckets) == (1, [(2, 1)])


def test_a_node_agent_reports_per_workload() -> None:
    cfg = msgspec.structs.replace(CFG, listeners=[
        msgspec.structs.replace(CFG.listeners[1], workload="shop/b-0")])
    m = ProxyMetrics()
    RequestStats(m, "inbound|8080", "inbound|8080").count(500, "", 2.0)
    (r,) = Summarizer(m).report(cfg)
    assert (r.direction, r.workload, r.failures) == ("inbound", "shop/b-0", 1)


def test_without_a_config_counts_are_consumed_not_reported() -> None:
    m = ProxyMetrics()
    s = Summarizer(m)
    RequestStats(m, "outbound", "outbound|80||api.shop").count(200, "", 1.0)
    assert s.report(None) == []
    assert s.report(CFG) == []  # consumed before: not reported late as this interval's


SPLIT = msgspec.convert({
    "version": "1",
    "node": {"name": "web-0", "namespace": "shop", "service": "web"},
    "listeners": [{"name": "outbound", "address": "127.0.0.1", "port": 15001,
                   "direction": "outbound", "route_table": "outbound"}],
    "clusters": [
        {"name": f"outbound|80||{s}.shop", "metadata": {"service": s, "namespace": "shop"}}
        for s in ("catalog", "catalog-v1", "catalog-v2")],
}, ProxyConfig)


def test_requests_addressed_to_another_service_are_moved_to_a_row_with_its_parent() -> None:
    """Route `catalog` splits to catalog-v1 (addressed stats); catalog-v1 is also called
    directly: the row without parent keeps only the direct calls."""
    from tulle.dataplane.listeners.request_stats import AddressedStats
    m = ProxyMetrics()
    direct = RequestStats(m, "outbound", "outbound|80||catalog-v1.shop")
    split = AddressedStats(direct, m.addressed.series("outbound", "outbound|80||catalog-v1.shop",
                                                      "shop/catalog"))
    s = Summarizer(m)
    for _ in range(6):
        split.count(200, "", 3.0)
    split.count(503, "", 30.0)
    direct.count(200, "", 0.2)
    rows = {(r.service, r.parent): r for r in s.report(SPLIT)}
    assert set(rows) == {("shop/catalog-v1", ""), ("shop/catalog-v1", "shop/catalog")}
    moved = rows[("shop/catalog-v1", "shop/catalog")]
    assert (moved.requests, moved.failures, dict(moved.buckets)) == (7, 1, {2: 6, 5: 1})
    assert moved.latency_sum_ms == 6 * 3.0 + 30.0
    own = rows[("shop/catalog-v1", "")]
    assert (own.requests, own.failures, dict(own.buckets)) == (1, 0, {0: 1})
    # the metrics stay whole: the cluster's series counted all eight
    assert sum(c.value for c in m.requests.children.values()) == 8
    split.count(200, "", 3.0)
    (again,) = s.report(SPLIT)
    assert (again.parent, again.requests) == ("shop/catalog", 1)


def test_failed_grpc_calls_are_reported_apart_and_moved_with_a_split() -> None:
    """ADR 0112: a row carries the gRPC calls that failed on an HTTP 200 as `grpc_failures`
    (its HTTP failures stay `failures`), as deltas; a split's share goes to its parent row."""
    from tulle.dataplane.listeners.request_stats import AddressedStats
    m = ProxyMetrics()
    cluster = "outbound|80||catalog-v1.shop"
    direct = RequestStats(m, "outbound", cluster)
    split = AddressedStats(direct, m.addressed.series("outbound", cluster, "shop/catalog"))
    s = Summarizer(m)
    for stats, outcomes in ((direct, [(200, "0"), (200, "14"), (503, "")]),
                            (split, [(200, "14"), (200, "5"), (200, "0")])):
        for status, grpc in outcomes:
            stats.count(status, "", 1.0)
            stats.count_grpc(status, "", grpc)
    rows = {r.parent: r for r in s.report(SPLIT)}
    assert (rows[""].requests, rows[""].failures, rows[""].grpc_failures) == (3, 1, 1)
    moved = rows["shop/catalog"]
    assert (moved.requests, moved.failures, moved.grpc_failures) == (3, 0, 2)
    direct.count(200, "", 1.0)
    direct.count_grpc(200, "DC", "")  # cancelled by its client: CANCELLED
    (again,) = s.report(SPLIT)
    assert (again.parent, again.requests, again.grpc_failures) == ("", 1, 1)
    assert s.report(SPLIT) == []
    # On the wire only when there are some: an older control plane never sees the key.
    assert b"grpc_failures" not in msgspec.json.encode(StatsRow(
        direction="outbound", workload="shop/web-0", requests=1))
