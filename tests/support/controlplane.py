"""A real control plane (store, reconciler, push stream, REST API) in the test's event loop,
and proxies subscribed to it through the production `Agent`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tulle.controlplane.main import ControlPlane
from tulle.controlplane.push.protocol import WorkloadInfo
from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer


@contextlib.asynccontextmanager
async def running_control_plane(store_url: str = "memory", *, stream_port: int = 0,
                                debounce: float = 0.05) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(store_url, api_port=0, stream_port=stream_port, debounce=debounce)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


class SubscribedProxy:
    def __init__(self, server: ProxyServer, agent: Agent, task: asyncio.Task[None]) -> None:
        self.server = server
        self.agent = agent
        self.task = task

    async def stop(self) -> None:
        self.agent.stop()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.server.close()


async def subscribe(stream_ports: list[int], workload: WorkloadInfo,
                    cache_dir: Path | None = None) -> SubscribedProxy:
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", p) for p in stream_ports], workload,
                  cache_path=cache_dir / f"{workload.name}.json" if cache_dir else None,
                  backoff_max=0.3)
    await agent.start_from_cache()
    task = asyncio.get_running_loop().create_task(agent.run())
    return SubscribedProxy(server, agent, task)


async def apply(api: str, *docs: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{api}/api/v1/apply", json={"documents": list(docs)}) as r:
        return r.status, await r.json()


async def eventually(cond: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> float:
    """Wait until `cond()` (sync or async) is truthy; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def named_origin(name: str) -> AsyncIterator[int]:
    """An HTTP origin that answers every request with `{"name": NAME, "path": PATH}`."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "path": request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
