"""Audit of the dashboard against a hostile workload (dashboard audit, L4), in a real headless
Chromium: a real control plane, real sidecars with traffic (`test_stat.running_mesh`) and the
attacker's proxy, a raw stream peer admitted the supported way, sending stats reports.

A proxy's stats report names its peer Services as it likes (`StatsRow.service` is not
checked).  The topology's element ids are built by joining names (`client->service`,
`service=>workload`), so two chosen names make a traffic edge and a serves edge with one id:
cytoscape silently drops the second element.  What held: the names reach the page as text
and canvas labels only (no script ran), the page kept refreshing, no legitimate element can
be shadowed (nodes and traffic edges come first and their ids start with a prefix or a
checked workload name).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.cli.test_cli_audit import hostile_reporter
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.integration.controlplane.test_stat import Mesh, running_mesh
from tests.integration.dashboard.test_dashboard_browser import graph, read_only_token
from tests.support.chromium import headless_page
from tests.support.controlplane import auth, eventually

from tulle.proxyconfig.stats import StatsRow
from tulle.proxyconfig.stream import StatsReport, encode

OWN = "shop/b-0->q"
"""A Service b-0's sidecar names as its own (inbound): a serves edge `shop/b-0->q=>shop/b-0`."""
CALLED = "q=>shop/b-0"
"""A Service b-0 says it called (outbound): a traffic edge `shop/b-0->q=>shop/b-0`, the same."""


@contextlib.asynccontextmanager
async def reporting(raw: RawProxy, rows: list[StatsRow]) -> AsyncIterator[None]:
    stop = asyncio.Event()

    async def run() -> None:
        while not stop.is_set():
            raw.writer.write(encode(StatsReport(interval_ms=200, rows=rows)))
            await raw.writer.drain()
            await asyncio.sleep(0.2)

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def calling(m: Mesh) -> AsyncIterator[None]:
    stop = asyncio.Event()

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(10_000):
                if stop.is_set():
                    return
                with contextlib.suppress(aiohttp.ClientError):
                    await m.call("a", "/", s)
                await asyncio.sleep(0.05)

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield
    finally:
        stop.set()
        await task


async def test_a_proxys_chosen_service_names_cannot_make_two_topology_elements_share_an_id(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m, calling(m), \
            hostile_reporter(m) as raw, reporting(raw, [
                StatsRow(direction="inbound", workload="shop/b-0", service=OWN, requests=2),
                StatsRow(direction="outbound", workload="shop/b-0", service=CALLED,
                         requests=2)]):
        token = await read_only_token(m.cp.api_url)
        async with headless_page(tmp_path / "profile") as page:
            await page.send("Page.navigate", url=f"{m.cp.api_url}/dashboard/#token={token}")

            async def refreshed_or_failed() -> bool:
                st: dict[str, Any] = await page.poll(
                    "window.tulleDashboard && ({r: window.tulleDashboard.state.refreshes,"
                    " e: window.tulleDashboard.state.errors})") or {}
                return bool((st.get("r", 0) + st.get("e", 0)) >= 3)
            await eventually(refreshed_or_failed, timeout=30, interval=0.2)

            # The legitimate mesh is drawn and the page keeps refreshing without errors.
            g = await graph(page)
            assert "svc:shop/api" in g["nodes"], g
            assert "shop/a-0->shop/api" in {e["id"] for e in g["edges"]}, g
            assert await page.evaluate(
                "!!document.querySelector(\"#services tr[data-service='shop/api']\")") is True
            assert await page.evaluate("window.tulleDashboard.state.errors") == 0
            assert page.errors == [], page.errors

            # Every edge the API serves is drawn: none silently dropped by cytoscape as a
            # second element with an id already taken.
            async def api_edges() -> list[str]:
                async with aiohttp.ClientSession(headers=auth(m.cp.api_url)) as s, s.get(
                        f"{m.cp.api_url}/api/v1/topology") as r:
                    return [e["id"] for e in (await r.json())["edges"]]

            async def all_drawn() -> bool:
                want = await api_edges()
                drawn = [e["id"] for e in (await graph(page))["edges"]]
                return bool(sorted(want) == sorted(drawn))
            with contextlib.suppress(AssertionError):
                await eventually(all_drawn, timeout=10, interval=0.5)
            want, drawn = await api_edges(), [e["id"] for e in (await graph(page))["edges"]]
            assert sorted(want) == sorted(drawn), (want, drawn)
        # The API's element ids are unique (the page and any client key on them).
        async with aiohttp.ClientSession(headers=auth(m.cp.api_url)) as s, s.get(
                f"{m.cp.api_url}/api/v1/topology") as r:
            doc = await r.json()
        ids = [e["id"] for e in doc["edges"]] + [n["id"] for n in doc["nodes"]]
        assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
