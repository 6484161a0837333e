"""Issue 12 item 1: a real Prometheus scrapes two real proxies (mTLS between them) and a
PromQL success-rate query over `istio_requests_total` returns the expected value.

The caller's proxy (reporter `source`) and the server's proxy (reporter `destination`) both
carry the golden metrics; the origin answers 503 on `/fail`.  A known mix of 200s and 503s
goes through; the query Kiali and the Istio dashboards use for a service's success rate
gives 2/3, and the series carry Istio's labels with the identities the mTLS handshake
verified and the workloads the contract names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.integration.dataplane.test_mtls import CLIENT_ID, SERVER_ID, client_config, server_config
from tests.support.ca import TestCA
from tests.support.controlplane import serve_handler
from tests.support.prometheus import prometheus_server
from tests.support.proxy import RunningProxy, free_port, running_proxy

pytestmark = pytest.mark.timeout(90)

SERVER_METRICS = {"workload": "api-v1", "app": "api", "version": "v1", "cluster": "test",
                  "principal": SERVER_ID,
                  "peers": [{"principal": CLIENT_ID, "workload": "web-v2", "app": "web",
                             "version": "v2"}]}
CLIENT_METRICS = {"workload": "web-v2", "app": "web", "version": "v2", "cluster": "test",
                  "principal": CLIENT_ID}
API = {"service": "api", "namespace": "shop", "workload": "api-v1",
       "labels": {"app": "api", "version": "v1"}}


async def origin(request: web.Request) -> web.Response:
    return web.Response(status=503 if request.path == "/fail" else 200, text="x" * 50)


@asynccontextmanager
async def two_proxies() -> AsyncIterator[tuple[RunningProxy, RunningProxy]]:
    ca = TestCA()
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(serve_handler(origin))
        scfg: dict[str, Any] = server_config(ca, app, app)
        scfg["node"] = {"name": "api-v1-abc", "namespace": "shop", "service": "api"}
        scfg["telemetry"] = {"metrics": SERVER_METRICS}
        server = await stack.enter_async_context(running_proxy(scfg, admin=True))
        ccfg: dict[str, Any] = client_config(ca, server.port("in"))
        ccfg["node"] = {"name": "web-v2-xyz", "namespace": "shop"}
        ccfg["telemetry"] = {"metrics": CLIENT_METRICS}
        ccfg["clusters"][0]["metadata"] = API
        # /down goes to a cluster whose only endpoint refuses connections: 503, flag UF.
        ccfg["clusters"].append({"name": "down", "connect_timeout_ms": 2000, "endpoints": [
            {"address": "127.0.0.1", "port": free_port()}]})
        ccfg["route_tables"][0]["virtual_hosts"][0]["rules"].insert(0, {
            "matches": [{"path": {"type": "PathPrefix", "value": "/down"}}],
            "backends": [{"cluster": "down"}]})
        client = await stack.enter_async_context(running_proxy(ccfg, admin=True))
        yield client, server


async def send(client: RunningProxy, ok: int, failed: int) -> None:
    async with aiohttp.ClientSession() as s:
        for path, n, want in (("/ok", ok, 200), ("/fail", failed, 503)):
            for _ in range(n):
                async with s.get(client.url("out", path)) as r:
                    assert r.status == want
                    await r.read()


SUCCESS_RATE = ('sum(rate(istio_requests_total{{reporter="{r}",destination_service_name="api",'
                'response_code!~"5.."}}[5m])) / sum(rate(istio_requests_total{{reporter="{r}",'
                'destination_service_name="api"}}[5m]))')


async def test_prometheus_scrapes_golden_metrics_and_promql_gives_the_success_rate() -> None:
    async with two_proxies() as (client, server), prometheus_server(
            [client.admin_port, server.admin_port]) as prom:
        await prom.wait_for_targets()
        # Both series exist before the measured mix (rate() counts increases between samples),
        # in the mix's own ratio: Prometheus extrapolates each series to the window's start
        # by its first value over its increase, the same factor for both when the ratios
        # match, so the success rate comes out exact (ADR 0053 has the arithmetic).
        await send(client, 2, 1)
        total = 'sum(istio_requests_total{reporter="%s"})'
        for r in ("source", "destination"):
            await prom.wait_until(total % r, 3)
        await send(client, 20, 10)
        for r in ("source", "destination"):
            await prom.wait_until(total % r, 33)
            ok = f'sum(istio_requests_total{{reporter="{r}",response_code="200"}})'
            assert await prom.scalar(ok) == 22
            rate = await prom.scalar(SUCCESS_RATE.format(r=r))
            # Exact unless a scrape fell between the first two series' first requests.
            assert rate is not None and abs(rate - 2 / 3) < 2e-3, (r, rate)

        (dest,) = await prom.query('istio_requests_total{reporter="destination",'
                                   'response_code="503"}')
        labels = dest["metric"]
        assert labels["source_principal"] == CLIENT_ID
        assert labels["source_workload"] == "web-v2"
        assert labels["source_workload_namespace"] == "default"  # from the SPIFFE ID
        assert labels["source_app"] == "web" and labels["source_version"] == "v2"
        assert labels["destination_principal"] == SERVER_ID
        assert labels["destination_workload"] == "api-v1"
        assert labels["destination_workload_namespace"] == "shop"
        assert labels["destination_service"] == "api.shop.svc.cluster.local"
        assert labels["destination_canonical_service"] == "api"
        assert labels["destination_canonical_revision"] == "v1"
        assert labels["destination_cluster"] == "test"
        assert labels["connection_security_policy"] == "mutual_tls"
        assert labels["request_protocol"] == "http"
        assert labels["grpc_response_status"] == "-"
        assert labels["response_flags"] == "-"

        (src,) = await prom.query('istio_requests_total{reporter="source",response_code="200"}')
        labels = src["metric"]
        assert labels["source_workload"] == "web-v2"
        assert labels["source_workload_namespace"] == "shop"
        assert labels["source_principal"] == CLIENT_ID
        assert labels["destination_principal"] == SERVER_ID  # the one the cluster expects
        assert labels["destination_service"] == "api.shop.svc.cluster.local"
        assert labels["destination_app"] == "api" and labels["destination_version"] == "v1"
        assert labels["connection_security_policy"] == "unknown"

        # The histograms Grafana's latency panels read: p99 is within the buckets.
        p99 = await prom.scalar('histogram_quantile(0.99, sum(rate('
                                'istio_request_duration_milliseconds_bucket{reporter='
                                '"destination"}[5m])) by (le))')
        assert p99 is not None and 0 < p99 <= 10000
        sizes = await prom.scalar('sum(istio_response_bytes_count{reporter="source"})')
        assert sizes == 33
        body = await prom.scalar('sum(istio_response_bytes_sum{reporter="source"})')
        assert body == 33 * 50

        # A failure with its response flag, as Envoy spells it.
        async with aiohttp.ClientSession() as s, s.get(client.url("out", "/down")) as r:
            assert r.status == 503
        await prom.wait_until('sum(istio_requests_total{reporter="source",response_flags="UF",'
                              'response_code="503",destination_service_name="down"})', 1)
