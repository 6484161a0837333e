"""`tulle stat` end to end (ADR 0046): a real control plane, real sidecars on 127.0.0.x with
mTLS between them, an origin answering some requests 500, and the stat rows the control plane
aggregates from the proxies' stream reports.

Counts are checked exactly (every request the clients made, every 500 the origin gave); the
request rate within a tolerance against the rate the test measured itself; edges by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.support.cli import tulle
from tests.support.controlplane import (
    SubscribedProxy,
    apply,
    auth,
    eventually,
    running_control_plane,
    serve_handler,
    subscribe,
)
from tests.support.h2peers import H2Client, H2Response, running_h2_origin
from tests.support.proxy import free_port

from tulle.controlplane.main import ControlPlane
from tulle.dataplane.subscribed import shut_down
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.framing import frame
from tulle.proxyconfig.stats import StatsRow
from tulle.proxyconfig.stream import (
    Ack,
    Hello,
    Snapshot,
    StatsReport,
    StatsRequest,
    WorkloadInfo,
    encode,
)

V1 = "mesh.tulle.dev/v1alpha1"
NS = "shop"
SERVER_ADDR = "127.0.0.2"
INTERVAL = 0.2


def workload(name: str, address: str, ports: list[dict[str, Any]], outbound: int = 0,
             **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": address, "serviceAccount": name.split("-", maxsplit=1)[0],
                            "ports": ports}
    if outbound:
        spec["outboundPort"] = outbound
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": spec}


SLOW_STARTED: list[asyncio.Event] = []
"""Set when a `/slow` request reaches the origin (which then answers it 1.5 s later)."""


async def origin(request: web.Request) -> web.Response:
    if request.path.startswith("/fail"):
        return web.Response(status=500, text="broken")
    if request.path.startswith("/slow"):
        for e in SLOW_STARTED:
            e.set()
        await asyncio.sleep(1.5)
    return web.Response(text="ok")


@dataclass
class Mesh:
    cp: ControlPlane
    server: SubscribedProxy
    clients: dict[str, tuple[SubscribedProxy, int]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    async def call(self, who: str, path: str = "/", session: aiohttp.ClientSession | None = None
                   ) -> int:
        """One GET through `who`'s sidecar to Service `api`; counted when answered."""
        port = self.clients[who][1]
        async with contextlib.AsyncExitStack() as stack:
            s = session or await stack.enter_async_context(aiohttp.ClientSession())
            async with s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": "api"}) as r:
                await r.read()
                status = r.status
        self.sent[who] = self.sent.get(who, 0) + 1
        if status >= 500:
            self.failed[who] = self.failed.get(who, 0) + 1
        return status

    async def stat(self, *query: str) -> dict[str, Any]:
        params = dict(q.split("=", 1) for q in query)
        async with aiohttp.ClientSession(headers=auth(self.cp.api_url)) as s, s.get(
                f"{self.cp.api_url}/api/v1/stat", params=params) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 200, body
            return body


@contextlib.asynccontextmanager
async def running_mesh(tmp_path: Path, clients: tuple[str, ...] = ("a", "b"),
                       features: list[str] | None = None, interval: float = INTERVAL,
                       handler: Any = origin, grpc_origin: int = 0) -> AsyncIterator[Mesh]:
    """`handler`: the aiohttp handler behind api-0 (`origin` by default); `grpc_origin`: the
    port of an HTTP/2 origin to put behind api-0 instead, its Service port then `grpc`."""
    inbound = free_port()
    name = "grpc" if grpc_origin else "http"
    ports: dict[str, Any] = {"name": name, "port": 80, "targetPort": name}
    if grpc_origin:
        ports["appProtocol"] = "grpc"
    async with contextlib.AsyncExitStack() as stack:
        port = grpc_origin or await stack.enter_async_context(serve_handler(handler))
        cp = await stack.enter_async_context(running_control_plane(stats_interval=interval))
        outbound = {c: free_port() for c in clients}
        status, body = await apply(cp.api_url, workload(
            "api-0", SERVER_ADDR, [{"name": name, "port": inbound, "targetPort": port}],
            outbound=free_port(), app="api"),
            {"apiVersion": V1, "kind": "Service", "metadata": {"name": "api", "namespace": NS},
             "spec": {"selector": {"app": "api"}, "ports": [ports]}},
            *(workload(f"{c}-0", f"127.0.0.{10 + i}", [], outbound=outbound[c], app=c)
              for i, c in enumerate(clients)))
        assert status == 200, body
        started: list[SubscribedProxy] = []
        try:
            server = await subscribe([cp.stream_port], WorkloadInfo(
                name="api-0", namespace=NS, address=SERVER_ADDR), cache_dir=tmp_path)
            started.append(server)
            m = Mesh(cp, server)
            for i, c in enumerate(clients):
                p = await subscribe([cp.stream_port], WorkloadInfo(
                    name=f"{c}-0", namespace=NS, address=f"127.0.0.{10 + i}"),
                    cache_dir=tmp_path, features=features)
                started.append(p)
                m.clients[c] = (p, outbound[c])
            for c in clients:
                async def up(c: str = c) -> bool:
                    with contextlib.suppress(aiohttp.ClientError):
                        return await m.call(c) == 200
                    return False
                await eventually(up, timeout=15)
            yield m
        finally:
            for p in started:
                await p.stop()


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {it["name"]: it for it in items}


async def test_rows_count_every_request_and_every_500_and_name_the_edges(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as m:
        async with aiohttp.ClientSession() as s:
            for i in range(40):
                await m.call("a", "/fail" if i % 4 == 0 else "/", s)
            for _ in range(20):
                await m.call("b", "/", s)
        total = sum(m.sent.values())
        failed = sum(m.failed.values())
        assert failed == 10

        async def counted() -> dict[str, Any] | None:
            doc = await m.stat("kind=svc", "namespace=shop", "window=60s")
            api = by_name(doc["items"]).get("api")
            return doc if api and api["requests"] == total else None

        await eventually(counted, timeout=10)
        doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=60s")
        (api,) = doc["items"]
        assert (api["requests"], api["failures"]) == (total, failed)
        assert api["successRate"] == round(1 - failed / total, 6)
        assert api["meshed"] == 1  # api-0's sidecar serves it
        assert 0 < api["latencyMs"]["p50"] <= api["latencyMs"]["p95"] <= api["latencyMs"]["p99"]
        edges = {(e["from"]["name"], e["to"]["name"]): e for e in doc["edges"]}
        assert set(edges) == {("a-0", "api"), ("b-0", "api")}
        assert edges[("a-0", "api")]["requests"] == m.sent["a"]
        assert edges[("a-0", "api")]["failures"] == 10
        assert edges[("b-0", "api")]["failures"] == 0
        assert edges[("b-0", "api")]["successRate"] == 1.0
        # The server's own view: every request it served (the 500s are the origin's).
        await eventually(lambda: _served(m, total), timeout=10)
        wl = by_name((await m.stat("kind=workload", "namespace=shop", "window=60s"))["items"])
        assert set(wl) == {"api-0", "a-0", "b-0"}
        assert (wl["api-0"]["requests"], wl["api-0"]["failures"]) == (total, failed)
        # Open connections: the clients' pooled upstream connections to api, as they report.
        gauges = sum(int(p.server.metrics.upstream_connections_active.labels(
            "outbound|80||api.shop").value) for p, _ in m.clients.values())

        async def tcp_matches() -> bool:
            doc = await m.stat("kind=svc", "name=api", "namespace=shop")
            return bool(doc["items"]) and doc["items"][0]["tcpConnections"] == gauges
        assert gauges >= 1
        await eventually(tcp_matches, timeout=5)

        # The CLI: a kubectl-like table, the edges with KIND/NAME, JSON unchanged, --watch.
        code, out, err = await tulle(m.cp.api_url, "stat", "svc/api", "-n", NS,
                                     "--window", "60s")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50",
                                    "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]
        assert lines[1].split()[:3] == ["api", "1", f"{(1 - failed / total) * 100:.2f}%"]
        assert any(line.split()[:2] == ["a-0", "api"] for line in lines[2:])
        code, out, err = await tulle(m.cp.api_url, "stat", "workloads", "-n", NS, "-o", "wide")
        assert code == 0, err
        assert "REQUESTS" in out.splitlines()[0] and "api-0" in out
        code, out, err = await tulle(m.cp.api_url, "stat", "svc", "-n", NS, "-o", "json",
                                     "--window", "60s")
        assert code == 0, err
        assert json.loads(out)["items"][0]["requests"] == total
        code, out, err = await tulle(m.cp.api_url, "stat", "-n", NS, "--watch", "--count", "2",
                                     "--interval", "0.1")
        assert code == 0, err
        assert out.count("NAME") == 2


async def test_a_proxy_shutting_down_reports_its_last_traffic(tmp_path: Path) -> None:
    """SIGTERM's order (`subscribed.shut_down`): a last report, then the stream is left and
    the proxy drains, so a proxy that stops takes its last interval's traffic with it no more.
    The report interval here is a minute: every request below is in that last report only."""
    async with running_mesh(tmp_path, clients=("a",), interval=60.0) as m:
        async with aiohttp.ClientSession() as s:
            for i in range(12):
                await m.call("a", "/fail" if i % 3 == 0 else "/", s)
        proxy, _ = m.clients["a"]
        assert proxy.agent.stats_reports == 0  # nothing reported yet: the interval is long
        await shut_down(proxy.agent, proxy.task, proxy.server, timeout=2.0)
        # With `Draining` (ADR 0092): one as it says it, one when the drain ends.
        assert proxy.agent.stats_reports == 2

        async def reported() -> bool:
            doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=60s")
            edges = {(e["from"]["name"], e["to"]["name"]): e for e in doc["edges"]}
            a = edges.get(("a-0", "api"))
            return a is not None and (a["requests"], a["failures"]) == (m.sent["a"],
                                                                        m.failed["a"])
        await eventually(reported, timeout=5)


@contextlib.asynccontextmanager
async def stopping_mid_request(tmp_path: Path) -> AsyncIterator[
        tuple[Mesh, asyncio.Future[int], asyncio.Future[None], int]]:
    """A mesh whose client `a` made three calls and has a slow one in flight at api-0 when
    api-0's sidecar gets SIGTERM (`shut_down`, report interval a minute).  Yields the mesh, the
    slow call, the shutdown, and the requests api-0 served before the signal."""
    started = asyncio.Event()
    SLOW_STARTED.append(started)
    try:
        async with running_mesh(tmp_path, clients=("a",), interval=60.0) as m, \
                aiohttp.ClientSession() as s:
            for _ in range(3):
                await m.call("a", "/", s)
            slow = asyncio.ensure_future(m.call("a", "/slow", s))
            await asyncio.wait_for(started.wait(), 5)
            before = m.sent["a"]  # (the slow one is counted once it is answered)
            p = m.server
            stopping = asyncio.ensure_future(shut_down(p.agent, p.task, p.server, timeout=5.0))
            yield m, slow, stopping, before
    finally:
        SLOW_STARTED.remove(started)


async def test_what_a_draining_proxy_serves_is_reported(tmp_path: Path) -> None:
    """ADR 0092: a stopping sidecar says `Draining`, leaves its Service's endpoints at once,
    and keeps its stream, with its reports, through the drain: the slow request it finishes
    while draining is in `tulle stat`.  (Leaving the stream first lost it.)"""
    async with stopping_mid_request(tmp_path) as (m, slow, stopping, _):
        async def out_of_endpoints() -> bool:
            async with aiohttp.ClientSession(headers=auth(m.cp.api_url)) as c, c.get(
                    f"{m.cp.api_url}/api/v1/proxies") as r:
                items = (await r.json())["items"]
            api = [p for p in items if p["name"] == "api-0"]
            return bool(api) and api[0]["connected"] and api[0]["draining"]
        await eventually(out_of_endpoints, timeout=2)
        code, out, err = await tulle(m.cp.api_url, "get", "workloads", "-n", NS)
        assert code == 0, err
        assert "draining" in next(ln for ln in out.splitlines() if "api-0" in ln)
        assert not stopping.done()  # the slow request holds the drain
        assert await slow == 200
        await stopping
        # One report with `Draining` (what was served before), one at the drain's end.
        assert m.server.agent.draining and m.server.agent.stats_reports == 2
        await eventually(lambda: _served(m, m.sent["a"]), timeout=5)


async def test_what_was_served_before_sigterm_is_kept_when_the_stream_breaks_mid_drain(
        tmp_path: Path) -> None:
    """Before ADR 0092 a stopping proxy's last interval went out first thing at SIGTERM.  With
    `Draining` the report waits for the drain's end, on a stream that is not reopened if it
    breaks meanwhile (a network blip, the control plane closing it): the requests served
    before the signal must not be lost with it.  (The slow request the drain finished after
    the break is: nothing can carry it.)"""
    async with stopping_mid_request(tmp_path) as (m, slow, stopping, before):
        assert m.cp.push is not None

        def session() -> Any:
            return next((x for x in m.cp.push.live  # type: ignore[union-attr]
                         if x.st is not None and x.st.name == "api-0"
                         and x.draining is not None), None)
        await eventually(session, timeout=2)
        session().writer.transport.abort()  # the stream breaks mid-drain
        assert await slow == 200
        await stopping
        assert m.server.agent.draining
        await eventually(lambda: _served(m, before), timeout=5)


async def _served(m: Mesh, total: int) -> bool:
    wl = by_name((await m.stat("kind=workload", "namespace=shop", "window=60s"))["items"])
    return "api-0" in wl and wl["api-0"]["requests"] == total


async def delayed(request: web.Request) -> web.Response:
    """`/d/<ms>`: answer after that many milliseconds (the truth of a latency test)."""
    if request.path.startswith("/d/"):
        await asyncio.sleep(int(request.path[3:]) / 1000)
    return web.Response(text="ok")


async def test_percentiles_are_in_the_true_quantiles_bucket_and_the_window_slides(
        tmp_path: Path) -> None:
    """Audit ADR 0107: 20 requests the origin holds 50 ms and 10 it holds 200 ms.  The true
    p50 is ~51 ms (bucket 50-100), p95 and p99 ~201 ms (bucket 100-250): `tulle stat` must
    answer within those buckets (its stated error), and a window that no longer reaches the
    traffic must not count it."""
    async with running_mesh(tmp_path, clients=("a",), handler=delayed) as m:
        loop = asyncio.get_running_loop()
        spent = 0.0  # the client's own time for the 30: an upper bound of the proxies'
        async with aiohttp.ClientSession() as s:
            for i in range(30):
                t = loop.time()
                assert await m.call("a", "/d/200" if i % 3 == 0 else "/d/50", s) == 200
                spent += (loop.time() - t) * 1000
        total = m.sent["a"]  # (and the calls that brought the mesh up)

        async def counted() -> dict[str, Any] | None:
            doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=60s")
            return doc["items"][0] if doc["items"] and doc["items"][0]["requests"] == total \
                else None
        await eventually(counted, timeout=10)
        api = await counted()
        assert api is not None
        lat = api["latencyMs"]
        assert 50 < lat["p50"] <= 100, lat
        assert 100 < lat["p95"] <= 250 and 100 < lat["p99"] <= 250, lat
        # The mean is exact: at least the origin's holds, at most what the client waited
        # (plus the few fast calls that brought the mesh up).
        assert (20 * 50 + 10 * 200) / total <= lat["mean"] <= (spent + 50) / 30, (lat, spent)
        assert api["successRate"] == 1.0

        async def slid() -> bool:
            doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=1s")
            return not doc["items"] or doc["items"][0]["requests"] == 0
        await eventually(slid, timeout=10)


async def test_rps_within_tolerance_of_the_measured_rate(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        loop = asyncio.get_running_loop()
        done: list[float] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            async with aiohttp.ClientSession() as s:
                for _ in range(100_000):  # bounded; stopped long before
                    if stop.is_set():
                        return
                    await m.call("a", "/", s)
                    done.append(loop.time())

        task = loop.create_task(traffic())
        try:
            await eventually(lambda: bool(done) and done[-1] - done[0] > 3.5, timeout=30)
            doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=2s")
            now = loop.time()
            measured = sum(1 for t in done if t > now - 2) / 2
        finally:
            stop.set()
            await task
        (api,) = doc["items"]
        assert measured > 5, measured
        assert abs(api["rps"] - measured) <= 0.3 * measured, (api["rps"], measured)
        assert api["requests"] < len(done)  # the window slid: not everything since the start


async def test_a_proxy_without_the_feature_is_never_asked_and_its_stream_stays_up(
        tmp_path: Path) -> None:
    old = [f for f in SUPPORTED if f != "stats-reports"]
    async with running_mesh(tmp_path, clients=("a",), features=old) as m:
        for _ in range(5):
            assert await m.call("a") == 200
        await eventually(lambda: _served(m, m.sent["a"]), timeout=10)  # api-0 reports
        doc = await m.stat("kind=svc", "namespace=shop", "window=60s")
        assert doc["items"] == [] or doc["items"][0]["requests"] == 0  # no client reports
        client = m.clients["a"][0]
        assert client.agent.stats_reports == 0 and client.agent.connected.is_set()
        assert m.server.agent.stats_reports > 0


async def test_a_report_for_a_workload_the_stream_does_not_front_is_dropped(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        raw = await RawProxy.connect(m.cp.stream_port, Hello(
            workload=WorkloadInfo(name="b-0", namespace=NS, address="127.0.0.11"),
            features=list(SUPPORTED)), api=m.cp.api_url)
        try:
            for _ in range(10):  # asked after its first ACK
                msg = await raw.next()
                if isinstance(msg, Snapshot):
                    raw.writer.write(encode(Ack(version=msg.version)))
                if isinstance(msg, StatsRequest):
                    break
            assert isinstance(msg, StatsRequest) and msg.interval_ms == INTERVAL * 1000
            forged = StatsRow(direction="inbound", workload="shop/api-0", service="shop/api",
                              requests=1_000_000)
            raw.writer.write(encode(StatsReport(interval_ms=200, rows=[forged])))
            raw.writer.write(encode(StatsReport(interval_ms=200, rows=[StatsRow(
                direction="outbound", workload="shop/b-0", service="shop/api", requests=3,
                failures=5)])))
            assert m.cp.push is not None and m.cp.push.stats is not None
            window = m.cp.push.stats
            await eventually(lambda: window.refused == 2, timeout=5)
            await eventually(lambda: _served(m, m.sent["a"]), timeout=10)  # not 1,000,000 more
            wl = by_name((await m.stat("kind=workload", "namespace=shop",
                                       "window=60s"))["items"])
            assert "b-0" not in wl  # its only report was refused whole
            # the stream is still up: the control plane still answers it
            status = await m.stat("kind=svc")
            assert status["kind"] == "Stat"
        finally:
            raw.close()


async def test_the_endpoint_is_read_only_and_refuses_bad_queries(tmp_path: Path) -> None:
    async with running_control_plane(stats_interval=INTERVAL) as cp:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{cp.api_url}/api/v1/stat") as r:
                assert r.status == 401
            h = auth(cp.api_url)
            async with s.post(f"{cp.api_url}/api/v1/api-tokens", headers=h,
                              json={"role": "read-only", "name": "viewer"}) as r:
                assert r.status == 201
                reader = (await r.json())["token"]
            ro = {"authorization": f"Bearer {reader}"}
            async with s.get(f"{cp.api_url}/api/v1/stat", headers=ro) as r:
                body = await r.json()
                assert r.status == 200 and body["items"] == [] and body["window"] == "30s"
            for query, reason in (({"kind": "pods"}, "kind: 'pods'"),
                                  ({"window": "soon"}, "window: invalid duration"),
                                  ({"window": "1h"}, "window: must be more than 0")):
                async with s.get(f"{cp.api_url}/api/v1/stat", headers=ro, params=query) as r:
                    text = await r.text()
                    assert r.status == 400 and reason in text, text
        code, out, err = await tulle(cp.api_url, "stat", "pods")
        assert code == 1 and "kind: 'pods'" in err
        code, out, err = await tulle(cp.api_url, "stat")
        assert code == 0 and "No traffic reported" in out


GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
MESSAGE = b"\x00\x00\x00\x00\x03abc"


async def grpc_calls(m: Mesh, who: str, n: int) -> list[H2Response]:
    """`n` unary gRPC calls through `who`'s sidecar to Service `api` (h2c, one connection)."""
    client = await H2Client.connect(m.clients[who][1])
    try:
        return [await asyncio.wait_for(client.request("POST", "/script", GRPC, body=MESSAGE,
                                                      authority="api"), 5)
                for _ in range(n)]
    finally:
        client.close()


def grpc_status_of(r: H2Response) -> bytes | None:
    return dict(r.trailers).get(b"grpc-status") or dict(r.headers).get(b"grpc-status")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def promql_success(p: SubscribedProxy, reporter: str) -> tuple[int, int]:
    """What a PromQL success rate over the golden metrics adds up on one proxy: the requests
    with `response_code!~"5..|0"` and `grpc_response_status=~"0|-"` (OK, or not gRPC), and
    all of them, of `istio_requests_total{reporter=...}` (docs/observability/metrics.md)."""
    ok = total = 0
    for line in p.server.metrics.registry.render().splitlines():
        if not line.startswith("istio_requests_total{"):
            continue
        series, _, value = line.rpartition(" ")
        labels = dict(_LABEL.findall(series))
        if labels["reporter"] != reporter:
            continue
        n = int(float(value))
        total += n
        code = labels["response_code"]
        if not (code.startswith("5") or code == "0") and labels["grpc_response_status"] in (
                "0", "-"):
            ok += n
    return ok, total


async def test_a_grpc_service_failing_with_unavailable_shows_its_true_success_rate(
        tmp_path: Path) -> None:
    """ADR 0112: a gRPC call fails with HTTP 200 and a non-OK `grpc-status`.  `tulle stat`
    judged by the HTTP status alone, so a service failing 15 calls of 20 with UNAVAILABLE (14)
    showed 100% success.  Now every view counts them (the Service, the edge, the serving
    workload; JSON and `-o wide`), and agrees with a PromQL success rate over the golden
    metrics' `grpc_response_status` on the same proxies."""
    async with running_h2_origin() as (port, h2), running_mesh(
            tmp_path, clients=("a",), grpc_origin=port) as m:
        h2.script = ["after-14"] * 15 + ["ok"] * 5
        got = await grpc_calls(m, "a", 20)
        assert [r.status for r in got] == [200] * 20  # HTTP says: all fine
        assert sorted(grpc_status_of(r) or b"" for r in got) == [b"0"] * 5 + [b"14"] * 15
        total = m.sent["a"] + 20  # (and the HTTP calls that brought the mesh up)

        async def counted() -> dict[str, Any] | None:
            doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=60s")
            return doc if doc["items"] and doc["items"][0]["requests"] == total else None
        await eventually(counted, timeout=10)
        doc = await counted()
        assert doc is not None
        (api,) = doc["items"]
        assert (api["requests"], api["failures"]) == (total, 15)
        assert api["successRate"] == round(1 - 15 / total, 6)
        (edge,) = doc["edges"]
        assert (edge["from"]["name"], edge["requests"], edge["failures"]) == ("a-0", total, 15)
        # The caller's sidecar: the same figure as PromQL over its golden metrics.
        client = m.clients["a"][0]
        assert promql_success(client, "source") == (total - 15, total)
        # The server's own view: its sidecar saw the origin's trailers too.
        await eventually(lambda: _served(m, total), timeout=10)
        wl = by_name((await m.stat("kind=workload", "namespace=shop", "window=60s"))["items"])
        assert (wl["api-0"]["requests"], wl["api-0"]["failures"]) == (total, 15)
        assert promql_success(m.server, "destination") == (total - 15, total)
        code, out, err = await tulle(m.cp.api_url, "stat", "svc/api", "-n", NS, "-o", "wide",
                                     "--window", "60s")
        assert code == 0, err
        head, row = out.splitlines()[:2]
        assert dict(zip(head.split(), row.split(), strict=False))["FAILURES"] == "15"
        assert row.split()[2] == f"{(1 - 15 / total) * 100:.2f}%"


async def test_an_old_proxys_report_without_grpc_failures_still_adds_up(tmp_path: Path) -> None:
    """A proxy from before ADR 0112 reports rows without `grpc_failures` (it does not announce
    `stats-grpc-status`): its rows are taken as they were, its HTTP failures counted, and
    they add up with a new proxy's failed gRPC calls under the same Service."""
    async with running_h2_origin() as (port, h2), running_mesh(
            tmp_path, clients=("a",), grpc_origin=port) as m:
        h2.script = ["after-14"] * 4 + ["ok"] * 4
        await grpc_calls(m, "a", 8)
        old = [f for f in SUPPORTED if f != "stats-grpc-status"]
        raw = await RawProxy.connect(m.cp.stream_port, Hello(
            workload=WorkloadInfo(name="b-0", namespace=NS, address="127.0.0.11"),
            features=old), api=m.cp.api_url)
        try:
            for _ in range(10):  # asked after its first ACK
                msg = await raw.next()
                if isinstance(msg, Snapshot):
                    raw.writer.write(encode(Ack(version=msg.version)))
                if isinstance(msg, StatsRequest):
                    break
            assert isinstance(msg, StatsRequest)
            # The bytes an older proxy sends: no `grpc_failures` key at all.
            raw.writer.write(frame(json.dumps({
                "type": "stats", "interval_ms": 200, "rows": [{
                    "direction": "outbound", "workload": "shop/b-0", "service": "shop/api",
                    "requests": 6, "failures": 2, "buckets": [[2, 6]],
                    "latency_sum_ms": 12.0}]}).encode()))
            total = m.sent["a"] + 8 + 6

            async def counted() -> dict[str, Any] | None:
                doc = await m.stat("kind=svc", "name=api", "namespace=shop", "window=60s")
                return doc if doc["items"] and doc["items"][0]["requests"] == total else None
            await eventually(counted, timeout=10)
            doc = await counted()
            assert doc is not None
            assert m.cp.push is not None and m.cp.push.stats is not None
            assert m.cp.push.stats.refused == 0
            (api,) = doc["items"]
            assert api["failures"] == 4 + 2
            edges = {e["from"]["name"]: e for e in doc["edges"]}
            assert (edges["b-0"]["requests"], edges["b-0"]["failures"]) == (6, 2)
            assert (edges["a-0"]["requests"], edges["a-0"]["failures"]) == (m.sent["a"] + 8, 4)
        finally:
            raw.close()
