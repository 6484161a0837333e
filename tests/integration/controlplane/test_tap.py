"""`tulle tap` end to end (ADR 0056): a real control plane, real sidecars with mTLS between
them (`test_stat.running_mesh`), records streamed from the proxies that saw the requests.

Also the doors: who may tap (401 without a token, 403 for header values with a read-only
one), a flood of taps (429 at the control plane, a refusal from a proxy over its own cap), a
busy proxy (its records bounded by the rate, the rest counted), a watcher that goes away (the
tap stops at the proxies), and a proxy speaking for a tap that is not its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.integration.controlplane.test_stat import NS, Mesh, running_mesh
from tests.support.cli import tulle
from tests.support.controlplane import auth, eventually

from tulle.controlplane.telemetry.tap import TapBroker
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import Ack, Hello, Snapshot, TapEvents, TapStart, WorkloadInfo, encode
from tulle.proxyconfig.tap import MAX_TAPS, TapRecord


class Watch:
    """One streaming `GET /api/v1/tap`, read line by line."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.items: list[dict[str, Any]] = []

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            line = await self.resp.content.readline()
        assert line, "the tap stream ended"
        item: dict[str, Any] = json.loads(line)
        self.items.append(item)
        return item

    async def requests(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                item = await self.next(timeout)
                if item["type"] == "request":
                    out.append(item)
        return out


@contextlib.asynccontextmanager
async def watching(m: Mesh, token: dict[str, str] | None = None,
                   **query: str) -> AsyncIterator[Watch]:
    async with aiohttp.ClientSession(headers=token if token is not None
                                     else auth(m.cp.api_url)) as s, s.get(
            f"{m.cp.api_url}/api/v1/tap", params=query) as r:
        assert r.status == 200, await r.text()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        w = Watch(r)
        first = await w.next()
        assert first["type"] == "started", first
        yield w


def broker(m: Mesh) -> TapBroker:
    assert m.cp.push is not None and m.cp.push.taps is not None
    return m.cp.push.taps


def running_taps(m: Mesh) -> int:
    return sum(len(p.server.taps.taps) for p in [m.server, *(c for c, _ in m.clients.values())])


async def test_a_service_tap_streams_both_sides_of_each_request_filtered_at_the_proxies(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as m, watching(
            m, kind="svc", name="api", namespace=NS, path="/fail", status="5xx") as w:
        assert sorted(w.items[0]["proxies"]) == ["shop/a-0", "shop/api-0", "shop/b-0"]
        await eventually(lambda: running_taps(m) == 3)
        async with aiohttp.ClientSession() as s:
            assert await m.call("a", "/ok", s) == 200  # not matched: never built
            assert await m.call("a", "/fail/1?q=x", s) == 500
        got = await w.requests(2)
        by_dir = {r["direction"]: r for r in got}
        assert set(by_dir) == {"inbound", "outbound"}
        out, inn = by_dir["outbound"], by_dir["inbound"]
        for r in got:
            assert (r["method"], r["path"], r["status"]) == ("GET", "/fail/1?q=x", 500)
            assert r["service"] == "shop/api" and r["latency_ms"] >= 0 and r["ts_ms"] > 0
            assert "headers" not in r  # not asked
        assert out["proxy"] == out["workload"] == out["source"] == "shop/a-0"
        assert out["authority"] == "api" and out["cluster"] == "outbound|80||api.shop"
        assert out["mtls"] is True  # the cluster originates mesh mTLS
        assert (inn["proxy"], inn["destination"]) == ("shop/api-0", "shop/api-0")
        assert inn["source"] == "spiffe://cluster.local/ns/shop/sa/a" and inn["mtls"] is True
        assert inn["protocol"].startswith("HTTP/")
        assert not [i for i in w.items if i["type"] == "request" and i["path"] == "/ok"]
    # The watcher went: the tap ends at every proxy.
    await eventually(lambda: running_taps(m) == 0 and not broker(m).watches)


async def test_a_workload_tap_headers_for_admin_only_and_credentials_always_redacted(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as m:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{m.cp.api_url}/api/v1/tap",
                             params={"kind": "deploy", "name": "a"}) as r:
                assert r.status == 401
            async with s.post(f"{m.cp.api_url}/api/v1/api-tokens", headers=auth(m.cp.api_url),
                              json={"role": "read-only", "name": "viewer"}) as r:
                assert r.status == 201
                reader = {"Authorization": f"Bearer {(await r.json())['token']}"}
            async with s.get(f"{m.cp.api_url}/api/v1/tap", headers=reader, params={
                    "kind": "deploy", "name": "a", "namespace": NS, "headers": "true"}) as r:
                assert r.status == 403 and "admin" in (await r.json())["error"]
        async with watching(m, reader, kind="deploy", name="a", namespace=NS) as w:
            await eventually(lambda: running_taps(m) == 1)  # only a-0's sidecar
            assert w.items[0]["proxies"] == ["shop/a-0"]
            assert await m.call("a", "/r") == 200
            (r,) = await w.requests(1)
            assert (r["direction"], r["path"], r["proxy"]) == ("outbound", "/r", "shop/a-0")
        async with watching(m, kind="wl", name="a-0", namespace=NS, headers="true") as w:
            await eventually(lambda: running_taps(m) == 1)
            port = m.clients["a"][1]
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{port}/h", headers={
                        "Host": "api", "Authorization": "Bearer s3cret-token",
                        "Cookie": "session=s3cret", "X-Visible": "yes"}) as resp:
                assert resp.status == 200
            (r,) = await w.requests(1)
            hdrs = dict(r["headers"])
            assert hdrs["authorization"] == "<redacted>" and hdrs["cookie"] == "<redacted>"
            assert hdrs["x-visible"] == "yes"
            assert "s3cret" not in json.dumps(r)


async def test_a_busy_proxy_sends_at_most_its_rate_and_counts_the_rest(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m, watching(
            m, kind="deploy", name="a", namespace=NS, rate="2") as w:
        await eventually(lambda: running_taps(m) == 1)
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(m.call("a", "/busy", s) for _ in range(60)))
        recorded = dropped = 0
        async with asyncio.timeout(10):
            while recorded + dropped < 60:
                item = await w.next()
                recorded += item["type"] == "request"
                dropped += item.get("count", 0) if item["type"] == "dropped" else 0
        # A bucket of 2 tokens refilled at 2/s over the burst's few hundred milliseconds.
        assert recorded <= 2 + 2 * 3, recorded
        assert recorded + dropped == 60


async def test_a_flood_of_taps_is_refused_by_the_control_plane_and_capped_at_the_proxy(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        b = broker(m)
        async with contextlib.AsyncExitStack() as stack:
            watches = [await stack.enter_async_context(
                watching(m, kind="deploy", name="a", namespace=NS)) for _ in range(b.max_watches)]
            async with aiohttp.ClientSession(headers=auth(m.cp.api_url)) as s, s.get(
                    f"{m.cp.api_url}/api/v1/tap",
                    params={"kind": "deploy", "name": "a", "namespace": NS}) as r:
                assert r.status == 429
            # a-0's sidecar runs MAX_TAPS of them and refused the others, saying so.
            assert m.clients["a"][0].server.taps.taps and b.max_watches > MAX_TAPS
            await eventually(lambda: m.clients["a"][0].server.taps.refused
                             == b.max_watches - MAX_TAPS)
            assert len(m.clients["a"][0].server.taps.taps) == MAX_TAPS
            ended = 0
            for w in watches[MAX_TAPS:]:
                item = await w.next()
                assert item["type"] == "ended" and "refused" in item["reason"], item
                ended += 1
            assert ended == b.max_watches - MAX_TAPS
            assert await m.call("a") == 200  # the proxy still serves
        await eventually(lambda: running_taps(m) == 0 and not b.watches)


async def test_records_from_a_proxy_the_tap_was_not_sent_to_are_refused(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m, watching(
            m, kind="deploy", name="a", namespace=NS) as w:
        raw = await RawProxy.connect(m.cp.stream_port, Hello(
            workload=WorkloadInfo(name="b-0", namespace=NS, address="127.0.0.11"),
            features=list(SUPPORTED)), api=m.cp.api_url)
        try:
            for _ in range(10):
                msg = await raw.next()
                if isinstance(msg, Snapshot):
                    raw.writer.write(encode(Ack(version=msg.version)))
                    break
            assert not isinstance(msg, TapStart)  # b-0 is not deploy/a
            tap_id = w.items[0]["id"]
            forged = TapRecord(ts_ms=1, direction="outbound", workload="shop/a-0",
                               method="GET", path="/forged")
            raw.writer.write(encode(TapEvents(id=tap_id, records=[forged])))
            b = broker(m)
            await eventually(lambda: b.refused == 1)
            assert await m.call("a", "/real") == 200
            (r,) = await w.requests(1)
            assert r["path"] == "/real"
        finally:
            raw.close()


async def test_the_cli_prints_records_as_lines_and_as_json(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        stop = asyncio.Event()

        async def traffic() -> None:
            async with aiohttp.ClientSession() as s:
                for _ in range(2000):  # bounded; stopped long before
                    if stop.is_set():
                        return
                    await m.call("a", "/cli", s)
                    await asyncio.sleep(0.02)

        task = asyncio.get_running_loop().create_task(traffic())
        try:
            code, out, err = await tulle(m.cp.api_url, "tap", "deploy/a", "-n", NS,
                                         "--count", "2", "--direction", "outbound")
            assert code == 0, err
            lines = out.splitlines()
            assert len(lines) == 2 and "tapping 1 proxy: shop/a-0" in err
            assert "outbound" in lines[0] and "GET api/cli" in lines[0] and "-> 200" in lines[0]
            code, out, err = await tulle(m.cp.api_url, "tap", "svc/api", "-n", NS, "-o", "json",
                                         "--count", "1", "--method", "GET")
            assert code == 0, err
            assert json.loads(out)["service"] == "shop/api"
            code, out, err = await tulle(m.cp.api_url, "tap", "api", "-n", NS)
            assert code == 2 and "KIND/NAME" in err
            code, out, err = await tulle(m.cp.api_url, "tap", "svc/api", "--status", "6xx")
            assert code == 1 and "status" in err
        finally:
            stop.set()
            await task
        await eventually(lambda: running_taps(m) == 0 and not broker(m).watches)


async def test_top_ranks_the_busiest_paths_from_the_tap(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as m:
        stop = asyncio.Event()

        async def traffic() -> None:
            async with aiohttp.ClientSession() as s:
                for i in range(5000):  # bounded; stopped long before
                    if stop.is_set():
                        return
                    await m.call("a" if i % 2 else "b", "/hot" if i % 4 else "/fail/cold", s)
                    await asyncio.sleep(0.01)

        task = asyncio.get_running_loop().create_task(traffic())
        try:
            code, out, err = await tulle(m.cp.api_url, "top", "svc/api", "-n", NS, "-o", "json",
                                         "--count", "2", "--interval", "1.5",
                                         "--max-rps", "100")
        finally:
            stop.set()
            await task
        assert code == 0, err
        last = json.loads(out.splitlines()[-1])
        rows = {(r["source"].rsplit("/", 1)[-1], r["path"]): r for r in last["items"]}
        # The servers' view (inbound), once per request: callers by their SPIFFE IDs.
        assert set(rows) <= {("a", "/hot"), ("b", "/hot"), ("b", "/fail/cold")}
        hot = rows[("a", "/hot")]
        assert hot["destination"] == "shop/api-0" and hot["successRate"] == 1.0
        assert last["items"][0]["path"] == "/hot"  # the busiest first
        assert rows[("b", "/fail/cold")]["successRate"] == 0.0
        code, out, err = await tulle(m.cp.api_url, "top", "deploy/a", "-n", NS, "--count", "1",
                                     "--interval", "0.3")
        assert code == 0, err
        assert out.splitlines()[0] == "(no requests yet)"  # the traffic has stopped
        await eventually(lambda: not broker(m).watches and running_taps(m) == 0)


async def test_a_proxy_without_the_feature_is_never_sent_a_tap_and_stays_up(
        tmp_path: Path) -> None:
    old = [f for f in SUPPORTED if f != "tap"]
    async with running_mesh(tmp_path, clients=("a",), features=old) as m, watching(
            m, kind="deploy", name="a", namespace=NS) as w:
        assert w.items[0]["proxies"] == []  # a-0 did not announce `tap`
        # ...and the watcher is told so, not "none connected yet" (ADR 0122: a real build
        # from before tap was left out of `tulle tap svc/...` without a word).
        assert w.items[0]["untapped"] == ["shop/a-0"]
        assert await m.call("a") == 200
        client = m.clients["a"][0]
        assert client.server.taps.taps == () and client.agent.connected.is_set()


async def test_a_tapped_grpc_call_carries_its_grpc_status_and_top_counts_it(
        tmp_path: Path) -> None:
    """ADR 0119: a gRPC call fails with HTTP 200 and a non-OK `grpc-status`.  Each record a tap
    gets carries the call's status as the golden metrics count it (both sides of the call),
    and `top` counts a call that did not end OK as a failure."""
    from tests.integration.controlplane.test_stat import grpc_calls, grpc_status_of
    from tests.support.h2peers import running_h2_origin

    from tulle.cli.top import TopTable

    async with running_h2_origin() as (port, h2), running_mesh(
            tmp_path, clients=("a",), grpc_origin=port) as m, watching(
            m, kind="svc", name="api", namespace=NS, path="/script", rate="100") as w:
        await eventually(lambda: running_taps(m) == 2)
        h2.script = ["after-14"] * 3 + ["ok"] * 3
        got = await grpc_calls(m, "a", 6)
        assert [(r.status, grpc_status_of(r)) for r in got] == (
            [(200, b"14")] * 3 + [(200, b"0")] * 3)
        records = await w.requests(12)
        for direction in ("inbound", "outbound"):
            mine = [r for r in records if r["direction"] == direction]
            assert sorted((r["status"], r["grpc_status"]) for r in mine) == (
                [(200, "0")] * 3 + [(200, "14")] * 3), mine
        table = TopTable()
        for r in records:
            if r["direction"] == "inbound":
                table.add(r)
        (row,) = table.top(5)
        assert (row.path, row.count, row.failures) == ("/script", 6, 3)
        assert row.to_dict()["successRate"] == 0.5
