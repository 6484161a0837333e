"""`tulle tap`'s lines: readable, and safe for the terminal whatever a proxy sent."""

from __future__ import annotations

from tulle.cli.tap import line, notice
from tulle.cli.tap_stream import tap_query


def test_a_line_shows_the_request_and_escapes_control_characters() -> None:
    r = {"ts_ms": 1_700_000_000_123, "direction": "inbound", "proxy": "shop/api-0",
         "method": "GET", "authority": "api", "path": "/x\x1b[2J\r\n", "status": 503,
         "latency_ms": 12.34, "flags": "UF", "source": "spiffe://td/ns/shop/sa/a",
         "destination": "shop/api-0", "mtls": True,
         "headers": [["x-a", "1\x07"]]}
    text = line(r)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    first, header = text.split("\n")
    assert ".123 inbound  shop/api-0 GET api/x\\x1b[2J\\x0d\\x0a -> 503 12.3ms flags=UF" in first
    assert first.endswith("src=spiffe://td/ns/shop/sa/a dst=shop/api-0 tls=true")
    assert header == "    x-a: 1\\x07"


def test_notices() -> None:
    assert notice({"type": "started", "proxies": ["a", "b"]}) == "# tapping 2 proxies: a, b"
    assert notice({"type": "started", "proxies": []}) == (
        "# tapping 0 proxies: none connected yet")
    assert notice({"type": "started", "proxies": ["a"], "untapped": ["b", "c"]}) == (
        "# tapping 1 proxy: a\n# not tapped, their build has no tap (requests they see are "
        "not shown): b, c")
    alone = notice({"type": "started", "proxies": [], "untapped": ["b"]})
    assert alone is not None and alone.startswith("# tapping 0 proxies: none\n")
    assert notice({"type": "heartbeat"}) is None


def test_the_query() -> None:
    assert tap_query("deploy/web", "shop", path="/a", headers=True, method="") == {
        "kind": "deploy", "name": "web", "namespace": "shop", "path": "/a", "headers": "true"}


def test_top_groups_by_source_destination_method_and_path_without_query() -> None:
    from tulle.cli.top import TopTable

    t = TopTable(max_rows=3)
    base = {"direction": "inbound", "source": "spiffe://td/ns/shop/sa/a", "workload": "shop/api-0",
            "method": "GET"}
    for i, (path, status, ms) in enumerate([("/a?x=1", 200, 5.0), ("/a?x=2", 500, 1.0),
                                            ("/a", 200, 3.0), ("/b", 200, 9.0)]):
        t.add(base | {"path": path, "status": status, "latency_ms": ms, "ts_ms": i})
    t.add({"direction": "outbound", "source": "shop/a-0", "service": "shop/api", "method": "GET",
           "path": "/b", "status": 0, "latency_ms": 2.0})
    t.add(base | {"path": "/c"})
    t.add(base | {"path": "/d"})  # over max_rows: not counted
    first, *rest = t.top(10)
    assert (first.destination, first.path, first.count, first.failures) == (
        "shop/api-0", "/a", 3, 1)
    assert (first.best, first.worst, first.last) == (1.0, 5.0, 3.0)
    assert {(r.destination, r.path) for r in rest} == {("shop/api-0", "/b"), ("shop/api", "/b")}
    assert t.records == 5
    text = t.render(1)
    assert text.splitlines()[0].split() == ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT",
                                            "BEST", "WORST", "LAST", "SUCCESS"]
    assert text.splitlines()[1].split()[-5:] == ["3", "1.0ms", "5.0ms", "3.0ms", "66.67%"]
    (out,) = [r for r in rest if r.destination == "shop/api"]
    assert out.to_dict()["successRate"] == 0.0  # no response counts as a failure


def test_a_grpc_call_shows_its_status_and_top_counts_a_non_ok_one_as_failed() -> None:
    """ADR 0119: HTTP 200 with `grpc-status: 14` is a failed call."""
    from tulle.cli.tap import line
    from tulle.cli.top import TopTable, failed

    r = {"ts_ms": 0, "direction": "inbound", "method": "POST", "path": "/p.S/M", "status": 200,
         "grpc_status": "14", "latency_ms": 1.0, "workload": "shop/api-0", "source": "s"}
    assert " -> 200 grpc-status=14 " in line(r)
    assert " -> 200 1.0ms" in line(r | {"grpc_status": ""})
    assert [failed(r | {"grpc_status": g}) for g in ("14", "0", "")] == [True, False, False]
    assert failed(r | {"grpc_status": "0", "status": 0})
    t = TopTable()
    for g in ("14", "0", "0", "0"):
        t.add(r | {"grpc_status": g})
    (row,) = t.top(1)
    assert (row.count, row.failures) == (4, 1)
