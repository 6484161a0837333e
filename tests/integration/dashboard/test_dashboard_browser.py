"""The dashboard in a real headless Chromium (ADR 0056): a real control plane, three real
sidecars with mTLS between them and traffic through them (`test_stat.running_mesh`).

The page must load without a console error (a CSP refusal, a failed load and an uncaught
exception all count), draw the mesh's services, workloads and edges with mTLS on them, keep
its numbers updating, show the routes and policies of a Service, and stream a live tap.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.controlplane.test_stat import NS, Mesh, running_mesh
from tests.support.chromium import Page, headless_page
from tests.support.controlplane import apply, auth, eventually

GW = "gateway.networking.k8s.io/v1"
ROUTE = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "api-v1", "namespace": NS},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                  "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                             "backendRefs": [{"name": "api", "port": 80}]}]}}
POLICY = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "TimeoutPolicy",
          "metadata": {"name": "api-timeouts", "namespace": NS},
          "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                   "requestTimeout": "4s"}}


async def read_only_token(api: str) -> str:
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.post(
            f"{api}/api/v1/api-tokens", json={"role": "read-only", "name": "dashboard"}) as r:
        assert r.status == 201
        token: str = (await r.json())["token"]
        return token


@contextlib.asynccontextmanager
async def traffic(m: Mesh) -> Any:
    stop = asyncio.Event()

    async def run(who: str) -> None:
        async with aiohttp.ClientSession() as s:
            for i in range(10_000):  # bounded; stopped long before
                if stop.is_set():
                    return
                with contextlib.suppress(aiohttp.ClientError):
                    await m.call(who, "/fail" if who == "b" and i % 5 == 0 else "/", s)
                await asyncio.sleep(0.02)

    tasks = [asyncio.get_running_loop().create_task(run(c)) for c in ("a", "b")]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def graph(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = await page.evaluate("""(() => {
        const cy = window.tulleDashboard && window.tulleDashboard.cy;
        if (!cy) return {nodes: [], edges: []};
        return {nodes: cy.nodes().map(n => n.id()).sort(),
                edges: cy.edges().map(e => ({id: e.id(), kind: e.data('kind'),
                    mtls: e.data('mtlsText'), label: e.data('label'), rps: e.data('rps'),
                    visible: e.visible()}))};
    })()""")
    return value


async def test_the_dashboard_draws_the_mesh_updates_and_taps(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as m, traffic(m):
        status, body = await apply(m.cp.api_url, ROUTE, POLICY)
        assert status == 200, body
        token = await read_only_token(m.cp.api_url)  # read-only is enough for all of it
        async with headless_page(tmp_path / "profile") as page:
            await page.send("Page.navigate", url=f"{m.cp.api_url}/dashboard/#token={token}")

            want_nodes = {"svc:shop/api", "wl:shop/a-0", "wl:shop/b-0", "wl:shop/api-0"}
            want_edges = {"shop/a-0->shop/api", "shop/b-0->shop/api", "shop/api=>shop/api-0"}

            async def drawn() -> dict[str, Any] | None:
                g = await graph(page)
                ids = {e["id"] for e in g["edges"]}
                return g if want_nodes <= set(g["nodes"]) and want_edges <= ids else None

            await eventually(drawn, timeout=30, interval=0.2)
            g = await graph(page)
            edges = {e["id"]: e for e in g["edges"]}
            for e in ("shop/a-0->shop/api", "shop/b-0->shop/api"):
                assert edges[e]["kind"] == "traffic" and edges[e]["mtls"] == "yes", edges[e]
                assert " rps · " in edges[e]["label"] and "p99" in edges[e]["label"]
                assert "mTLS" in edges[e]["label"] and edges[e]["visible"]
            assert edges["shop/api=>shop/api-0"]["kind"] == "serves"
            assert edges["shop/api=>shop/api-0"]["mtls"] == "yes"  # strict inbound chains
            assert await page.evaluate("window.location.hash") == ""  # the token left the URL

            # Numbers update: refreshes go on and the Service's request rate shows traffic.
            first = await page.evaluate("window.tulleDashboard.state.refreshes")
            await eventually(lambda: _refreshed(page, first + 2), timeout=15, interval=0.2)
            row = await page.evaluate("""(() => {
                const tr = document.querySelector("#services tr[data-service='shop/api']");
                return tr && {rps: tr.querySelector('.rps').textContent,
                              success: tr.querySelector('.success').textContent,
                              sparks: tr.querySelectorAll('svg.spark polyline').length};
            })()""")
            assert row is not None and float(row["rps"]) > 0, row
            assert row["success"].endswith("%") and row["sparks"] == 2
            history = await page.evaluate(
                "window.tulleDashboard.state.history['shop/api'].rps.length")
            assert history >= 3

            # Routes and policies of the Service: a click on its row.
            await page.evaluate(
                "document.querySelector(\"#services tr[data-service='shop/api']\").click()")

            async def attached() -> list[str] | None:
                kinds: list[str] = await page.evaluate(
                    "[...document.querySelectorAll('#attached details.attached')]"
                    ".map(d => d.dataset.kind)")
                return kinds or None

            await eventually(attached, timeout=10, interval=0.1)
            assert sorted(await attached() or []) == ["HTTPRoute", "TimeoutPolicy"]

            # A live tap from the page (the click above filled in svc/api).
            await page.evaluate("document.getElementById('tap-start').click()")

            async def tapped() -> int:
                n: int = await page.evaluate("document.querySelectorAll('#tap tbody tr').length")
                return n
            await eventually(tapped, timeout=15, interval=0.2)
            cells = await page.evaluate(
                "[...document.querySelector('#tap tbody tr').cells].map(c => c.textContent)")
            assert cells[3] == "GET" and cells[9] in ("yes", "no")

            # A hostile path (httptools takes it raw) reaches the page as text, never as HTML.
            hostile = "/x<img/src=x/onerror=window.pwned=1>"
            assert await raw_get(m.clients["a"][1], hostile) == 200

            async def shown() -> bool:
                paths: list[str] = await page.evaluate(
                    "[...document.querySelectorAll('#tap td.path')].map(c => c.textContent)")
                return hostile in paths
            await eventually(shown, timeout=10, interval=0.1)
            assert await page.evaluate("document.querySelectorAll('#tap img').length") == 0
            assert await page.evaluate("typeof window.pwned") == "undefined"
            await page.evaluate("document.getElementById('tap-stop').click()")
            assert m.cp.push is not None and m.cp.push.taps is not None
            broker = m.cp.push.taps
            await eventually(lambda: not broker.watches, timeout=10)

            assert page.errors == [], page.errors


async def raw_get(port: int, path: str) -> int:
    """A GET with `path` sent byte for byte (no client library would send it unquoted)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10):
            status_line = await reader.readline()
            await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def _refreshed(page: Page, n: int) -> bool:
    return bool(await page.evaluate("window.tulleDashboard.state.refreshes") >= n)


async def test_the_page_without_a_token_asks_for_one_and_shows_no_data(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m, headless_page(
            tmp_path / "profile") as page:
        await page.send("Page.navigate", url=f"{m.cp.api_url}/dashboard/")
        await eventually(lambda: page.evaluate(
            "(() => { const e = document.getElementById('login'); return !!e && !e.hidden; })()"),
            timeout=15, interval=0.1)
        assert await page.evaluate("document.getElementById('main').hidden") is True
        assert page.errors == [], page.errors


async def test_a_tapped_grpc_call_that_failed_is_marked_failed_on_the_page(
        tmp_path: Path) -> None:
    """ADR 0119: a gRPC call fails with HTTP 200 and a non-OK `grpc-status`.  The tap's rows
    show the status and mark the failed calls as the 5xx ones are marked (`tr.fail`); a call
    that ended OK is not marked."""
    from tests.integration.controlplane.test_stat import grpc_calls
    from tests.integration.controlplane.test_tap import running_taps
    from tests.support.h2peers import running_h2_origin

    async with running_h2_origin() as (port, h2), running_mesh(
            tmp_path, clients=("a",), grpc_origin=port) as m:
        token = await read_only_token(m.cp.api_url)
        async with headless_page(tmp_path / "profile") as page:
            await page.send("Page.navigate", url=f"{m.cp.api_url}/dashboard/#token={token}")
            await eventually(lambda: page.evaluate(
                "!!document.getElementById('tap-name') && "
                "document.getElementById('main').hidden === false"), timeout=15, interval=0.1)
            await page.evaluate(f"""(() => {{
                document.getElementById('namespace').value = {NS!r};
                document.getElementById('tap-kind').value = 'svc';
                document.getElementById('tap-name').value = 'api';
                document.getElementById('tap-path').value = '/script';
                document.getElementById('tap-start').click();
            }})()""")
            await eventually(lambda: running_taps(m) == 2, timeout=15)
            h2.script = ["after-14"] * 3 + ["ok"] * 3
            assert len(await grpc_calls(m, "a", 6)) == 6

            async def rows() -> list[dict[str, Any]] | None:
                got: list[dict[str, Any]] = await page.evaluate("""
                    [...document.querySelectorAll('#tap tbody tr')].map(tr => ({
                        direction: tr.cells[1].textContent, status: tr.cells[6].textContent,
                        failed: tr.classList.contains('fail')}))""")
                return got if len(got) >= 12 else None

            await eventually(rows, timeout=15, interval=0.2)
            got = await rows()
            assert got is not None and len(got) == 12, got
            for direction in ("inbound", "outbound"):
                mine = sorted((r["status"], r["failed"]) for r in got
                              if r["direction"] == direction)
                assert mine == [("200 grpc 0", False)] * 3 + [("200 grpc 14", True)] * 3, got
            await page.evaluate("document.getElementById('tap-stop').click()")
            assert page.errors == [], page.errors
