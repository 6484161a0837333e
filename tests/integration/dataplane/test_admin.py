"""The admin endpoint: /ready, /metrics (valid Prometheus text), /config_dump, /clusters."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from tests.support.proxy import free_port, running_proxy, simple_config
from tests.support.rawhttp import RawClient
from tests.support.subproc import http_get

from tulle.dataplane.listeners.admin import start_admin
from tulle.dataplane.server import ProxyServer


def _with_dead_cluster(origin: int) -> dict[str, Any]:
    """simple_config plus a route /dead to a cluster whose only endpoint refuses connections."""
    cfg = simple_config(origin)
    cfg["listeners"][0]["protocol"] = "http1"
    cfg["clusters"].append({"name": "dead", "endpoints": [
        {"address": "127.0.0.1", "port": free_port()}]})
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"].insert(0, {
        "matches": [{"path": {"type": "PathPrefix", "value": "/dead"}}],
        "backends": [{"cluster": "dead"}]})
    cfg["version"] = "v-admin"
    return cfg


async def test_ready_is_503_without_config_and_while_draining(origin: int) -> None:
    empty = ProxyServer()
    admin = await start_admin(empty, "127.0.0.1", 0)
    port = admin.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        status, body = await http_get(port, "/ready")
        assert (status, body) == (503, b"NOT READY: no config in force\n")
    finally:
        admin.close()

    async with running_proxy(simple_config(origin), admin=True) as p:
        assert await http_get(p.admin_port, "/ready") == (200, b"READY\n")
        await p.server.drain(timeout=1.0)
        assert await http_get(p.admin_port, "/ready") == (503, b"NOT READY: draining\n")


async def test_metrics_is_valid_exposition_with_every_family(origin: int) -> None:
    async with running_proxy(_with_dead_cluster(origin), admin=True) as p, \
            aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/echo"), data=b"hello") as r:
            assert r.status == 200
            await r.read()
        async with s.get(p.url(path="/status/503")) as r:
            assert r.status == 503
        async with s.get(p.url(path="/dead/x")) as r:
            assert r.status == 503  # connect failure (UF)
        bad = await RawClient.connect(p.port())
        bad.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await bad.response()).status == 400
        bad.close()

        status, body = await http_get(p.admin_port, "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def samples(name: str, **labels: str) -> float:
        fam = families[name]
        return sum(s.value for s in fam.samples
                   if s.name == name + "_total" or s.name == name
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    # prometheus_client strips `_total` from counter family names.
    assert families["tulle_proxy_requests"].type == "counter"
    assert samples("tulle_proxy_requests", listener="out", cluster="backend",
                   response_code="200") == 1
    assert samples("tulle_proxy_requests", cluster="backend", response_code="503") == 1
    assert samples("tulle_proxy_requests", cluster="dead", response_code="503",
                   response_flags="UF") == 1
    hist = families["tulle_proxy_request_duration_milliseconds"]
    assert hist.type == "histogram"
    counts = [s for s in hist.samples if s.name.endswith("_count")
              and s.labels["cluster"] == "backend"]
    assert counts[0].value == 2
    assert families["tulle_proxy_downstream_connections_active"].type == "gauge"
    assert samples("tulle_proxy_downstream_connections", listener="out") >= 2
    assert samples("tulle_proxy_downstream_bytes_received", listener="out") > 0
    assert samples("tulle_proxy_downstream_bytes_sent", listener="out") > 0
    assert samples("tulle_proxy_upstream_connect_failures", cluster="dead") == 1
    assert samples("tulle_proxy_protocol_errors", listener="out") == 1


async def test_config_dump_is_the_config_in_force(origin: int) -> None:
    cfg = _with_dead_cluster(origin)
    async with running_proxy(cfg, admin=True) as p:
        status, body = await http_get(p.admin_port, "/config_dump")
        assert status == 200
        dumped = json.loads(body)
        assert dumped["version"] == "v-admin"
        assert [c["name"] for c in dumped["clusters"]] == ["backend", "dead"]
        assert dumped["settings"]["drain_timeout_ms"] == 15000  # defaults are spelled out

        cfg["version"] = "v-next"
        await p.apply(cfg)
        assert json.loads((await http_get(p.admin_port, "/config_dump"))[1])["version"] == "v-next"


async def test_clusters_lists_endpoints_and_connection_counts(origin: int) -> None:
    async with running_proxy(_with_dead_cluster(origin), admin=True) as p:
        client = await RawClient.connect(p.port())
        assert (await client.request("GET", "/echo")).status == 200
        status, body = await http_get(p.admin_port, "/clusters")
        client.close()
    assert status == 200
    by_name = {c["name"]: c for c in json.loads(body)}
    backend = by_name["backend"]
    assert backend["protocol"] == "http1"
    assert backend["connections_total"] == 1
    assert backend["connections_active"] == 1
    [ep] = backend["endpoints"]
    assert ep["address"] == f"127.0.0.1:{origin}"
    assert (ep["connections_idle"], ep["connections_busy"]) == (1, 0)
    assert ep["latency_ewma_ms"] > 0  # the one response was sampled (peak-EWMA's input)
    assert by_name["dead"]["connections_total"] == 0


async def test_unknown_path_is_404_and_other_methods_405(origin: int) -> None:
    async with running_proxy(simple_config(origin), admin=True) as p:
        status, body = await http_get(p.admin_port, "/nope")
        assert status == 404
        assert b"/ready" in body  # lists what exists
        assert (await http_get(p.admin_port, "/ready", method="POST"))[0] == 405
        assert (await http_get(p.admin_port, "/metrics", method="DELETE"))[0] == 405
        client = await RawClient.connect(p.admin_port)
        r = await client.request("HEAD", "/ready")
        assert (r.status, r.body) == (200, b"")
        r = await client.request("POST", "/ready")  # same connection: keep-alive works
        assert r.status == 405
        assert r.headers["allow"] == "GET, HEAD"
        client.close()
