"""Aggregation into Service, Workload and edge rows over the window."""

from __future__ import annotations

import pytest

from tulle.controlplane.telemetry.stat import stat_document
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.proxyconfig.stats import StatsRow
from tulle.proxyconfig.stream import StatsReport


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def row(direction: str, workload: str, service: str, requests: int, failures: int = 0,
        bucket: int = 3, tcp: int = 0) -> StatsRow:
    return StatsRow(direction=direction, workload=workload, service=service,  # type: ignore[arg-type]
                    requests=requests, failures=failures,
                    buckets=[(bucket, requests)] if requests else [],
                    latency_sum_ms=7.5 * requests, tcp_open=tcp)


@pytest.fixture
def win() -> StatsWindow:
    """Two clients (a-0 for 10 s at 10 rps, b-0 for only 2 s at 5 rps) calling shop/api,
    served by api-0 (which sees both); a-0 also calls shop/db."""
    clock = Clock()
    w = StatsWindow(clock=clock)
    for i in range(10):
        clock.now += 1
        w.ingest("shop/a-0", StatsReport(interval_ms=1000, rows=[
            row("outbound", "shop/a-0", "shop/api", 10, failures=1, tcp=2),
            row("outbound", "shop/a-0", "shop/db", 4, bucket=1)]), {"shop/a-0"})
        if i >= 8:
            w.ingest("shop/b-0", StatsReport(interval_ms=1000, rows=[
                row("outbound", "shop/b-0", "shop/api", 5, tcp=1)]), {"shop/b-0"})
        w.ingest("shop/api-0", StatsReport(interval_ms=1000, rows=[
            row("inbound", "shop/api-0", "shop/api", 10 + (5 if i >= 8 else 0), tcp=3)]),
            {"shop/api-0"})
    return w


def test_service_rows_are_the_clients_view(win: StatsWindow) -> None:
    doc = stat_document(win, 30, "Service", namespace="shop")
    by = {it["name"]: it for it in doc["items"]}
    api = by["api"]
    assert api["requests"] == 110 and api["failures"] == 10
    assert api["successRate"] == pytest.approx(100 / 110)
    # a-0: 100 requests over 10 s covered; b-0: 10 over 2 s -> 10 + 5 rps, not 110 / 30
    assert api["rps"] == pytest.approx(15.0)
    assert api["latencyMs"]["p50"] == pytest.approx(7.5)  # the middle of the (5, 10] bucket
    assert api["latencyMs"]["mean"] == pytest.approx(7.5)
    assert api["tcpConnections"] == 3  # each client's latest gauge, summed
    assert api["meshed"] == 1  # api-0 serves it
    assert by["db"]["rps"] == pytest.approx(4.0) and by["db"]["meshed"] == 0
    edges = {(e["from"]["name"], e["to"]["name"]): e for e in doc["edges"]}
    assert set(edges) == {("a-0", "api"), ("b-0", "api"), ("a-0", "db")}
    assert edges[("a-0", "api")]["successRate"] == pytest.approx(0.9)
    assert edges[("b-0", "api")]["rps"] == pytest.approx(5.0)


def test_workload_rows_are_the_servers_view(win: StatsWindow) -> None:
    doc = stat_document(win, 30, "Workload")
    by = {it["name"]: it for it in doc["items"]}
    assert set(by) == {"a-0", "b-0", "api-0"}
    assert by["api-0"]["requests"] == 110 and by["api-0"]["rps"] == pytest.approx(11.0)
    assert by["api-0"]["tcpConnections"] == 3 and by["api-0"]["successRate"] == 1.0
    assert by["a-0"]["requests"] == 0 and by["a-0"]["successRate"] is None  # a pure client
    one = stat_document(win, 30, "Workload", name="a-0", namespace="shop")
    assert [it["name"] for it in one["items"]] == ["a-0"]
    assert {e["to"]["name"] for e in one["edges"]} == {"api", "db"}


def test_the_window_slides(win: StatsWindow) -> None:
    doc = stat_document(win, 1.5, "Service", name="api")  # reports at t-1, t
    (api,) = doc["items"]
    assert api["requests"] == 2 * 10 + 2 * 5 + 0  # the last two seconds only
    assert api["rps"] == pytest.approx(15.0)
    assert stat_document(win, 30, "Service", namespace="other")["items"] == []


def test_a_split_counts_under_the_service_addressed_and_each_backend() -> None:
    """web-0 addresses `catalog` (an HTTPRoute splits it 3:1 to catalog-v1 / catalog-v2)
    and calls catalog-v1 directly too; the pods' sidecars name `catalog` as their own
    Service, and the snapshots list them behind catalog, catalog-v1 and catalog-v2."""
    from tulle.controlplane.telemetry.stat import aggregate
    clock = Clock()
    w = StatsWindow(clock=clock)
    for _ in range(5):
        clock.now += 1
        w.ingest("shop/web-0", StatsReport(interval_ms=1000, rows=[
            StatsRow(direction="outbound", workload="shop/web-0", service="shop/catalog-v1",
                     parent="shop/catalog", requests=6, buckets=[(3, 6)]),
            StatsRow(direction="outbound", workload="shop/web-0", service="shop/catalog-v2",
                     parent="shop/catalog", requests=2, failures=1, buckets=[(3, 2)]),
            row("outbound", "shop/web-0", "shop/catalog-v1", 1, tcp=2),
            row("outbound", "shop/web-0", "shop/catalog-v2", 0, tcp=1),
            row("outbound", "shop/web-0", "shop/orders", 3, tcp=4)]), {"shop/web-0"})
        for pod in ("v1-0", "v2-0", "other-0"):  # other-0: on v2-0's node agent, which
            # names the node's one Service (catalog) for every workload it fronts
            w.ingest(f"shop/catalog-{pod}", StatsReport(interval_ms=1000, rows=[
                row("inbound", f"shop/catalog-{pod}", "shop/catalog", 4)]),
                {f"shop/catalog-{pod}"})
    behind = {"shop/catalog": {"shop/catalog-v1-0", "shop/catalog-v2-0"},
              "shop/catalog-v1": {"shop/catalog-v1-0"},
              "shop/catalog-v2": {"shop/catalog-v2-0", "shop/not-reporting"}}

    def members(services: object, reporting: object) -> dict[str, set[str]]:
        return behind

    doc = stat_document(win=w, window=30, kind="Service", namespace="shop", members=members)
    by = {it["name"]: it for it in doc["items"]}
    assert by["catalog"]["requests"] == 40 and by["catalog"]["rps"] == pytest.approx(8.0)
    assert by["catalog"]["failures"] == 5
    assert by["catalog-v1"]["requests"] == 35 and by["catalog-v1"]["rps"] == pytest.approx(7.0)
    assert by["catalog-v2"]["requests"] == 10 and by["catalog-v2"]["failures"] == 5
    assert (by["catalog"]["meshed"], by["catalog-v1"]["meshed"], by["catalog-v2"]["meshed"]) \
        == (2, 1, 1)  # the pods behind each that report: not other-0, not not-reporting
    # The proxy counts a pooled connection under its backend, not under a parent: the
    # Service addressed counts the connections of the backends its requests went to (not
    # orders', which web-0 also holds), each backend its own, the edges theirs.
    assert (by["catalog"]["tcpConnections"], by["catalog-v1"]["tcpConnections"],
            by["catalog-v2"]["tcpConnections"], by["orders"]["tcpConnections"]) == (3, 2, 1, 4)
    # `tulle stat svc/catalog`'s "who calls it": web-0, addressing it (and each backend's).
    edges = {(e["from"]["name"], e["to"]["name"]): (e["requests"], e["tcpConnections"])
             for e in doc["edges"]}
    assert edges == {("web-0", "catalog"): (40, 3), ("web-0", "catalog-v1"): (35, 2),
                     ("web-0", "catalog-v2"): (10, 1), ("web-0", "orders"): (15, 4)}
    one = stat_document(win=w, window=30, kind="Service", name="catalog", namespace="shop",
                        members=members)
    assert [(e["from"]["name"], e["to"]["name"]) for e in one["edges"]] == [("web-0", "catalog")]
    # What web-0 calls, and the topology graph's edges: by backend, what the pods took.
    wl = stat_document(win=w, window=30, kind="Workload", name="web-0", namespace="shop",
                       members=members)
    assert {e["to"]["name"] for e in wl["edges"]} == {"catalog-v1", "catalog-v2", "orders"}
    _, graph_edges = aggregate(w, 30)
    assert set(graph_edges) == {("shop/web-0", "shop/catalog-v1"),
                                ("shop/web-0", "shop/catalog-v2"), ("shop/web-0", "shop/orders")}
    # without the snapshots' members: only the sidecars' own Service (the old answer)
    rows, _ = aggregate(w, 30)
    assert len(rows[("Service", "shop/catalog-v1")].meshed) == 0
    assert len(rows[("Service", "shop/catalog")].meshed) == 3


def test_a_client_that_stops_reporting_decays_and_its_connections_go() -> None:
    """a-0 calls api at 10 rps for 10 s and its sidecar is then killed: its rate falls over
    the window as a stopped client's does (not the 10 rps it last had, which the remaining
    reports alone would say), and its connections are not counted once a report is missed."""
    clock = Clock()
    w = StatsWindow(clock=clock)
    for _ in range(10):
        clock.now += 1
        w.ingest("shop/a-0", StatsReport(interval_ms=1000, rows=[
            row("outbound", "shop/a-0", "shop/api", 10, tcp=2)]), {"shop/a-0"})
    clock.now += 0.9  # the next report is not due yet: nothing is known of this second
    (api,) = stat_document(w, 30, "Service", name="api")["items"]
    assert (api["rps"], api["tcpConnections"]) == (pytest.approx(10.0), 2)
    clock.now += 9.1  # 10 s since its last report: the last 9 s were silent
    (api,) = stat_document(w, 30, "Service", name="api")["items"]
    assert api["requests"] == 100  # still in the window
    assert api["rps"] == pytest.approx(100 / 19, abs=1e-3)
    assert api["tcpConnections"] == 0
    (edge,) = stat_document(w, 30, "Service", name="api")["edges"]
    assert (edge["rps"], edge["tcpConnections"]) == (pytest.approx(100 / 19, abs=1e-3), 0)
    clock.now += 25  # out of the window
    assert stat_document(w, 30, "Service", name="api")["items"] == []


def test_a_restarted_proxys_gap_is_time_without_traffic() -> None:
    """a-0's sidecar reports for 5 s and is down for 4 s; its new process reports 1.5 s (from
    its start), then 3 s more: 90 requests over the 13.5 s since the first report's interval
    began, not over the 9.5 s the reports cover."""
    clock = Clock()
    w = StatsWindow(clock=clock)
    for interval in [1.0] * 5 + [4.0, 1.5] + [1.0] * 3:
        clock.now += interval
        if interval == 4.0:
            continue  # down: no report
        w.ingest("shop/a-0", StatsReport(interval_ms=round(interval * 1000), rows=[
            row("outbound", "shop/a-0", "shop/api", 10)]), {"shop/a-0"})
    (api,) = stat_document(w, 30, "Service", name="api")["items"]
    assert api["requests"] == 90
    assert api["rps"] == pytest.approx(90 / 13.5, abs=1e-3)


def test_a_short_report_does_not_make_a_live_proxy_look_gone() -> None:
    """Reports every 5 s (the period the control plane asked for); a restart's last report
    covers 0.3 s, and the new process reports 5 s later.  Between its reports the proxy is
    current: its connections count and a 2 s window shows it.  The period is the one asked,
    not the shortest report's (which made it look gone 0.6 s after each report)."""
    clock = Clock()
    w = StatsWindow(clock=clock)

    def send(interval: float) -> None:
        w.ingest("shop/a-0", StatsReport(interval_ms=round(interval * 1000), rows=[
            row("outbound", "shop/a-0", "shop/api", 10, tcp=2)]), {"shop/a-0"}, 5.0)

    for _ in range(3):
        clock.now += 5
        send(5)
    clock.now += 0.3
    send(0.3)  # SIGTERM: the stopping process's last report
    clock.now += 5
    send(5)  # the new process's first
    clock.now += 4
    (api,) = stat_document(w, 30, "Service", name="api")["items"]
    assert api["tcpConnections"] == 2
    (api,) = stat_document(w, 2, "Service", name="api")["items"]
    assert api["requests"] == 10
