"""The golden metrics through real proxies: opaque TCP over mTLS, the admin's content
negotiation (and a hostile Accept), and a snapshot that turns them off and on again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from tests.integration.dataplane.test_mtls import (
    CLIENT_ID,
    SERVER_ID,
    client_config,
    greeting_server,
    server_config,
)
from tests.support.ca import TestCA
from tests.support.controlplane import named_origin
from tests.support.proxy import RunningProxy, running_proxy

PEERS = [{"principal": CLIENT_ID, "workload": "web-v2", "app": "web", "version": "v2"}]


@asynccontextmanager
async def pair(ca: TestCA) -> AsyncIterator[tuple[RunningProxy, RunningProxy, dict[str, Any]]]:
    async with named_origin("app") as app, greeting_server() as tcp_app:
        scfg = server_config(ca, app, tcp_app)
        scfg["node"] = {"name": "api-0", "namespace": "shop", "service": "api"}
        scfg["telemetry"] = {"metrics": {"workload": "api-v1", "principal": SERVER_ID,
                                         "peers": PEERS}}
        async with running_proxy(scfg, admin=True) as server:
            ccfg = client_config(ca, server.port("in"))
            ccfg["telemetry"] = {"metrics": {"workload": "web-v2", "principal": CLIENT_ID}}
            ccfg["clusters"][1]["metadata"] = {"service": "api", "namespace": "shop"}
            async with running_proxy(ccfg, admin=True) as client:
                yield client, server, scfg


async def until(proxy: RunningProxy, name: str, value: float, **labels: str) -> None:
    for _ in range(500):
        if proxy.metric(name, **labels) == value:
            return
        await asyncio.sleep(0.01)
    assert proxy.metric(name, **labels) == value


async def test_tcp_over_mtls_is_counted_on_both_sides_with_the_verified_caller() -> None:
    async with pair(TestCA()) as (client, server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port("tcp-out"))
        assert await asyncio.wait_for(reader.readline(), 10) == b"hello\n"
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"PING\n"
        assert server.metric("istio_tcp_connections_opened_total",
                             reporter="destination") == 1
        # While it lives, a scrape brings its bytes up to date (no timer, no per-packet work).
        status, _ = await _admin(server.admin_port, None)
        assert status.startswith(b"HTTP/1.1 200")
        assert server.metric("istio_tcp_received_bytes_total", reporter="destination") == 5
        assert server.metric("istio_tcp_connections_closed_total", reporter="destination") == 0
        writer.close()
        await writer.wait_closed()
        dest = {"reporter": "destination", "source_principal": CLIENT_ID,
                "source_workload": "web-v2", "destination_workload": "api-v1",
                "destination_principal": SERVER_ID, "request_protocol": "tcp",
                "connection_security_policy": "mutual_tls",
                "destination_service": "api.shop.svc.cluster.local"}
        await until(server, "istio_tcp_connections_closed_total", 1, **dest)
        assert server.metric("istio_tcp_received_bytes_total", **dest) == 5  # "ping\n"
        assert server.metric("istio_tcp_sent_bytes_total", **dest) == 11  # "hello\nPING\n"
        src = {"reporter": "source", "source_workload": "web-v2", "source_principal": CLIENT_ID,
               "destination_service_name": "api", "destination_principal": SERVER_ID,
               "connection_security_policy": "unknown"}
        await until(client, "istio_tcp_connections_closed_total", 1, **src)
        assert client.metric("istio_tcp_connections_opened_total", **src) == 1
        assert client.metric("istio_tcp_received_bytes_total", **src) == 5


async def _admin(port: int, accept: bytes | None) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = b"accept: " + accept + b"\r\n" if accept is not None else b""
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n" + extra + b"connection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def test_admin_negotiates_openmetrics_and_survives_a_hostile_accept() -> None:
    async with pair(TestCA()) as (client, _server, _):
        async with aiohttp.ClientSession() as s, s.get(client.url("out", "/")) as r:
            assert r.status == 200
        head, body = await _admin(client.admin_port, b"application/openmetrics-text;"
                                  b"version=1.0.0,text/plain;version=0.0.4;q=0.5")
        assert b"content-type: application/openmetrics-text; version=1.0.0" in head
        assert body.endswith(b"# EOF\n")
        fams = {f.name: f for f in om_parse(body.decode())}
        assert fams["istio_requests"].type == "counter"
        (sample,) = [s for s in fams["istio_requests"].samples if s.name == "istio_requests_total"]
        assert sample.labels["reporter"] == "source" and sample.value == 1
        head, body = await _admin(client.admin_port, None)
        assert b"content-type: text/plain; version=0.0.4" in head
        assert b"# EOF" not in body and b"istio_requests_total{" in body
        # 12 KiB of separators and bogus q values: answered (text), the admin keeps serving.
        hostile = b",;q=" * 3000
        head, body = await _admin(client.admin_port, hostile)
        assert head.startswith(b"HTTP/1.1 200") and b"text/plain" in head
        head, _ = await _admin(client.admin_port, b"application/openmetrics-text")
        assert b"openmetrics" in head


async def test_a_snapshot_without_telemetry_stops_the_golden_metrics_and_one_with_it_resumes() -> None:
    async with pair(TestCA()) as (client, server, scfg):
        async def call() -> None:
            async with aiohttp.ClientSession() as s, s.get(client.url("out", "/")) as r:
                assert r.status == 200

        await call()
        assert server.metric("istio_requests_total", reporter="destination") == 1
        off = {k: v for k, v in scfg.items() if k != "telemetry"}
        await server.apply(off)
        await call()
        assert server.metric("istio_requests_total", reporter="destination") == 1
        assert server.metric("tulle_proxy_requests_total", listener="in") == 2
        await server.apply({**scfg, "telemetry": {"metrics": {"workload": "api-v2",
                                                              "peers": PEERS}}})
        await call()
        assert server.metric("istio_requests_total", reporter="destination",
                             destination_workload="api-v2", source_workload="web-v2") == 1
        # The config version in force, one series (the snapshots here all say "0").
        assert server.metric("tulle_proxy_config_info", version="0") == 1
        await server.apply({**scfg, "version": "v9"})
        assert server.metric("tulle_proxy_config_info", version="v9") == 1
        assert server.metric("tulle_proxy_config_info") == 1


async def test_grpc_statuses_from_the_upstream_and_for_local_answers() -> None:
    import grpc
    from tests.support.grpc_peers import SERVICE, running_grpc_server, unary
    from tests.support.proxy import free_port, simple_config

    with running_grpc_server() as port:
        cfg = simple_config(port, protocol="http2", cluster_protocol="http2")
        cfg["telemetry"] = {"metrics": {}}
        cfg["clusters"].append({"name": "down", "protocol": "http2", "endpoints": [
            {"address": "127.0.0.1", "port": free_port()}]})
        cfg["route_tables"][0]["virtual_hosts"][0]["rules"].insert(0, {
            "matches": [{"headers": [{"name": "x-down", "value": "1"}]}],
            "backends": [{"cluster": "down"}]})
        async with running_proxy(cfg) as p:
            with grpc.insecure_channel(f"127.0.0.1:{p.port()}") as ch:
                assert await asyncio.to_thread(unary, ch, b"hello") == b"echo:hello"
                call = ch.unary_unary(f"/{SERVICE}/Unary", request_serializer=bytes,
                                      response_deserializer=bytes)
                codes = []
                for payload, metadata in ((b"missing", ()), (b"hello", (("x-down", "1"),))):
                    try:
                        await asyncio.to_thread(call, payload, metadata=metadata, timeout=10)
                    except grpc.RpcError as exc:
                        codes.append(exc.code())
                assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE]
            grpc_src = {"reporter": "source", "request_protocol": "grpc"}
            assert p.metric("istio_requests_total", response_code="200",
                            grpc_response_status="0", **grpc_src) == 1
            assert p.metric("istio_requests_total", grpc_response_status="5", **grpc_src) == 1
            assert p.metric("istio_requests_total", grpc_response_status="14",
                            response_flags="UF", **grpc_src) == 1


async def test_a_flood_of_label_sets_stays_within_the_bound_and_the_proxy_keeps_serving() -> None:
    """An upstream answering with 300 different status codes (a label it controls): the
    family keeps its bound, the rest lands in the overflow series and is counted."""
    from aiohttp import web
    from tests.support.controlplane import serve_handler
    from tests.support.proxy import simple_config

    async def origin(request: web.Request) -> web.Response:
        return web.Response(status=int(request.path.strip("/")))

    async with serve_handler(origin) as port:
        cfg = simple_config(port)
        cfg["telemetry"] = {"metrics": {"max_series_per_family": 20}}
        async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
            codes = [c for c in range(200, 600) if c not in (204, 304)][:300]
            for code in codes:
                async with s.get(p.url("out", f"/{code}")) as r:
                    assert r.status == code
                    await r.read()
            fams = p.server.metrics.golden  # type: ignore[attr-defined]
            for fam in (fams.requests, fams.duration, fams.request_bytes, fams.response_bytes):
                assert len(fam.children) == 21, fam.name  # 20 and the overflow series
            assert p.metric("istio_requests_total") == 300
            assert p.metric("istio_requests_total", response_code="overflow") == 280
            assert p.metric("tulle_proxy_metric_overflow_total",
                            family="istio_requests_total") == 280
            async with s.get(p.url("out", "/200")) as r:  # still serving
                assert r.status == 200
