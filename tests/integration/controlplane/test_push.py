"""A real proxy subscribed to a real push server: snapshot, deltas, NACK, outage, resync."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tests.support.ca import stream_tls
from tests.support.origin import running_origin

from tulle.controlplane.push.server import PushServer, SnapshotCache
from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.stream import WorkloadInfo

KEY = ("shop", "web-0")


def snapshot(version: str, upstream: int, listen: int, prefix: str = "/") -> Any:
    return validate({
        "version": version,
        "node": {"name": KEY[1], "namespace": KEY[0]},  # (a cache is served to its node only)
        "listeners": [{"name": "out", "port": listen, "protocol": "http1",
                       "route_table": "rt"}],
        "clusters": [{"name": "backend",
                      "endpoints": [{"address": "127.0.0.1", "port": upstream}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"value": prefix}}],
             "backends": [{"cluster": "backend"}]}]}]}],
    })


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def status(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status


async def routed(url: str) -> bool:
    """True when the proxy found a route (the 404 of "no route" names the listener)."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return "no route for host" not in await r.text()


@dataclass
class Subscribed:
    """A push server with its cache, and a real proxy subscribed to it (its agent)."""

    cache: SnapshotCache
    push: PushServer
    port: int
    proxy: ProxyServer
    tls: Any


@contextlib.asynccontextmanager
async def subscribed(tmp_path: Path) -> AsyncIterator[Subscribed]:
    cache = SnapshotCache()
    tls, trust = stream_tls()
    push = PushServer(cache, ping_interval=0.2, tls=tls)
    cp_port = await push.start("127.0.0.1", 0)
    proxy = ProxyServer()
    agent = Agent(proxy, [("127.0.0.1", cp_port)], WorkloadInfo(name="web-0", namespace="shop"),
                  cache_path=tmp_path / "snapshot.json", backoff_max=0.2, trust=trust)
    task = asyncio.create_task(agent.run())
    try:
        yield Subscribed(cache, push, cp_port, proxy, tls)
    finally:
        agent.stop()
        task.cancel()
        await proxy.close()
        await push.close()


async def test_snapshot_then_delta_then_nack_then_outage(tmp_path: Path, origin: int) -> None:
    from tests.support.proxy import free_port

    listen = free_port()
    async with subscribed(tmp_path) as sub:
        cache, push, cp_port, proxy, tls = sub.cache, sub.push, sub.port, sub.proxy, sub.tls
        cache.set(KEY, snapshot("v1", origin, listen))
        await wait_for(lambda: push.status.get(KEY) and push.status[KEY].acked_version == "v1")
        assert await status(f"http://127.0.0.1:{listen}/echo") == 200

        # A change goes as a delta; traffic follows.
        cache.set(KEY, snapshot("v2", origin, listen, prefix="/only"))
        await wait_for(lambda: push.status[KEY].acked_version == "v2")
        assert not await routed(f"http://127.0.0.1:{listen}/echo")
        assert await routed(f"http://127.0.0.1:{listen}/only")
        assert push.status[KEY].pushes == 2

        # A snapshot the proxy cannot apply (port taken) is NACKed and the old one stays.
        blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        taken = blocker.sockets[0].getsockname()[1]
        cache.set(KEY, snapshot("v3", origin, taken))
        await wait_for(lambda: push.status[KEY].nack_version == "v3")
        assert "cannot bind" in push.status[KEY].nack_reason
        assert push.status[KEY].acked_version == "v2"
        assert proxy.config is not None and proxy.config.version == "v2"
        blocker.close()

        # The control plane goes away: the proxy keeps serving v2.
        await push.close()
        await wait_for(lambda: not push.status[KEY].connected)
        assert not await routed(f"http://127.0.0.1:{listen}/echo")
        assert await routed(f"http://127.0.0.1:{listen}/only")

        # A control plane comes back (same port) with a newer snapshot: the proxy resyncs.
        cache2 = SnapshotCache()
        push2 = PushServer(cache2, ping_interval=0.2, tls=tls)
        await push2.start("127.0.0.1", cp_port)
        cache2.set(KEY, snapshot("v4", origin, listen))
        try:
            await wait_for(lambda: KEY in push2.status and push2.status[KEY].acked_version == "v4")
            assert await status(f"http://127.0.0.1:{listen}/echo") == 200
        finally:
            await push2.close()


async def test_restarted_proxy_serves_its_cached_snapshot_without_a_control_plane(
        tmp_path: Path) -> None:
    from tests.support.proxy import free_port

    listen = free_port()
    async with running_origin() as origin:
        cache = SnapshotCache()
        tls, trust = stream_tls()
        push = PushServer(cache, tls=tls)
        cp_port = await push.start("127.0.0.1", 0)
        cache.set(KEY, snapshot("v7", origin, listen))
        first = ProxyServer()
        agent = Agent(first, [("127.0.0.1", cp_port)], WorkloadInfo(name="web-0", namespace="shop"),
                      cache_path=tmp_path / "snap.json", backoff_max=0.2, trust=trust)
        task = asyncio.create_task(agent.run())
        await wait_for(lambda: KEY in push.status and push.status[KEY].acked_version == "v7")
        agent.stop()
        task.cancel()
        await first.close()
        await push.close()

        # Restart with the control plane gone: the cached snapshot is served.
        second = ProxyServer()
        agent2 = Agent(second, [("127.0.0.1", cp_port)],
                       WorkloadInfo(name="web-0", namespace="shop"),
                       cache_path=tmp_path / "snap.json", trust=trust)
        try:
            assert await agent2.start_from_cache()
            assert await status(f"http://127.0.0.1:{listen}/echo") == 200
        finally:
            await second.close()


async def test_a_proxy_back_before_the_first_snapshot_is_not_pushed_the_version_it_runs(
        tmp_path: Path, origin: int) -> None:
    """A control plane that has just started serves hellos while its first compilation still
    runs on its worker thread (ADR 0133): a proxy whose hello names the version it runs, and
    that version is what the compilation then gives it, is not sent it again (a CI run saw a
    sidecar pushed once after a control-plane restart)."""
    from tests.support.proxy import free_port

    listen = free_port()
    async with subscribed(tmp_path) as sub:
        push = sub.push
        sub.cache.set(KEY, snapshot("v1", origin, listen))
        await wait_for(lambda: KEY in push.status and push.status[KEY].acked_version == "v1")
        await push.close()
        # Back on the same port with nothing compiled yet: the proxy's hello comes first.
        cache2 = SnapshotCache()
        push2 = PushServer(cache2, ping_interval=0.2, tls=sub.tls)
        await push2.start("127.0.0.1", sub.port)
        try:
            await wait_for(lambda: KEY in push2.status and push2.status[KEY].connected)
            cache2.set(KEY, snapshot("v1", origin, listen))
            await wait_for(lambda: push2.status[KEY].acked_version == "v1")
            await asyncio.sleep(0.3)  # (a push would have gone by now: the session wakes at once)
            assert push2.status[KEY].pushes == 0
            assert push2.status[KEY].sent_version in ("", "v1")
            assert await status(f"http://127.0.0.1:{listen}/echo") == 200
        finally:
            await push2.close()
