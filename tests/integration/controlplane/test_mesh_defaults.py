"""Mesh defaults end to end: `Mesh.spec.defaults.requestTimeout` applied over the REST API
becomes every proxy's request timeout (a slow origin answers 504 after it, not after the
proxy's own 15 s), and the Mesh's status says what was applied and what was left out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    running_control_plane,
    serve_handler,
    subscribe,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.proxyconfig.stream import WorkloadInfo

MESH = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
        "spec": {"defaults": {"requestTimeout": "300ms"}}}


async def get(port: int, path: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}{path}", headers={"Host": "api"}) as r:
            return r.status
    except aiohttp.ClientConnectionError:
        return None


async def test_a_mesh_request_timeout_reaches_traffic_and_status(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.Response(text="ok")

    async with serve_handler(handler) as app, running_control_plane() as cp:
        out = free_port()
        status, body = await apply(
            cp.api_url, MESH, workload("web-0", free_port(), 1, out, app="web"),
            workload("api-0", free_port(), app, free_port(), app="api"),
            service("api", app="api"))
        assert status == 200, body
        proxies = [await subscribe([cp.stream_port], WorkloadInfo(name=n, namespace=NS,
                                                                  address="127.0.0.1"),
                                   cache_dir=tmp_path) for n in ("web-0", "api-0")]
        try:
            async def routed() -> bool:
                return await get(out, "/fast") == 200
            await eventually(routed, timeout=5.0)
            started = time.monotonic()
            assert await get(out, "/slow") == 504
            assert time.monotonic() - started < 5.0  # the Mesh's 300 ms, not the proxy's 15 s

            async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.get(
                    f"{cp.api_url}/api/v1/resources/meshes/default") as r:
                assert r.status == 200
                mesh = await r.json()

            def applied() -> bool:
                return bool((mesh.get("status") or {}).get("conditions"))
            if not applied():  # the status write may trail the compilation by a moment
                async def refreshed() -> bool:
                    nonlocal mesh
                    async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.get(
                            f"{cp.api_url}/api/v1/resources/meshes/default") as r:
                        mesh = await r.json()
                    return applied()
                await eventually(refreshed, timeout=5.0)
            conds = {c["type"]: c for c in mesh["status"]["conditions"]}
            cond = conds["DefaultsApplied"]
            # The settings outside `defaults` are reported by their own plugin (mesh_settings),
            # all in force since transparent listeners (ADR 0044).
            assert conds["SettingsApplied"]["status"] == "True"
            assert "requestTimeout 300ms" in cond["message"]
            # The API stores the documented retry budget: applied (every Service cluster's
            # retry budget, the `retries` plugin; ADR 0039).
            assert cond["status"] == "True" and "retryBudget" in cond["message"]
        finally:
            release.set()
            for p in proxies:
                await p.stop()

