"""Readiness from the stream, end to end (ADR 0040): a real control plane, three proxies.

A workload whose sidecar stops (closes its stream) leaves its Service's endpoints at once and
traffic through another sidecar sees no 503 once it is gone; it comes back when its sidecar
reconnects.  A sidecar that goes silent (answers no ping) is taken out after the stream's
liveness timeout.  A workload declared without a proxy stays an endpoint."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.support.controlplane import (
    SubscribedProxy,
    apply,
    eventually,
    named_origin,
    routes_with,
    running_control_plane,
    serve_handler,
    subscribe,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.controlplane.main import ControlPlane
from tulle.dataplane.subscribed import shut_down
from tulle.proxyconfig.stream import Ping, WorkloadInfo

ROUND_ROBIN = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
               "metadata": {"name": "default"},
               "spec": {"defaults": {"loadBalancing": {"type": "RoundRobin"}}}}
"""These tests tell the endpoints apart by who answers a few sequential requests; peak-EWMA
(the default) would send them all to whichever endpoint answered faster."""


async def names(url: str, n: int) -> collections.Counter[str]:
    """Who answered `n` requests (status codes for anything but 200)."""
    got: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url, headers={"Host": "api"}) as r:
                got[(await r.json())["name"] if r.status == 200 else str(r.status)] += 1
    return got


async def proxy_state(cp: ControlPlane, name: str) -> dict[str, Any]:
    assert cp.store is not None
    obj = await cp.store.get("Workload", NS, name)
    return dict((obj.get("status") or {}).get("proxy") or {})


def endpoints(web: SubscribedProxy) -> int:
    return sum(len(c.endpoints) for n, c in web.server.clusters.clusters.items()
               if "api" in n and c.cfg.workload == "")


async def _web_and_two_backends(cp: ControlPlane, app_a: int, app_b: int
                                ) -> tuple[int, dict[str, WorkloadInfo]]:
    """web-0 calling Service api (round robin) of api-a and api-b, whose apps listen on
    `app_a` and `app_b`: web-0's outbound port, and the three workloads to subscribe."""
    out = free_port()
    status, body = await apply(
        cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
        workload("api-a", free_port(), app_a, free_port(), app="api"),
        workload("api-b", free_port(), app_b, free_port(), app="api"),
        service("api", app="api"), ROUND_ROBIN)
    assert status == 200, body
    return out, {n: WorkloadInfo(name=n, namespace=NS, address="127.0.0.1")
                 for n in ("web-0", "api-a", "api-b")}


async def test_a_stopped_sidecar_leaves_the_endpoints_and_comes_back(tmp_path: Path) -> None:
    async with named_origin("a") as app_a, named_origin("b") as app_b, \
            running_control_plane() as cp:
        out, info = await _web_and_two_backends(cp, app_a, app_b)
        proxies = {n: await subscribe([cp.stream_port], w) for n, w in info.items()}
        url = f"http://127.0.0.1:{out}/x"
        try:
            await eventually(lambda: _both(url), timeout=10)
            assert (await proxy_state(cp, "api-b"))["state"] == "Connected"
            await eventually(lambda: routes_with(cp, "web-0", ("api-a", "api-b"), NS),
                             timeout=5)
            assert endpoints(proxies["web-0"]) == 2
            await proxies["api-b"].stop()  # SIGTERM's path: the agent closes its stream first
            took = await eventually(lambda: endpoints(proxies["web-0"]) == 1, timeout=5)
            assert took < 2.0
            st = await proxy_state(cp, "api-b")
            assert st["state"] == "Disconnected" and "closed the stream" in st["reason"]
            got = await names(url, 100)
            assert got == {"a": 100}, got  # no 503 once it is gone
            proxies["api-b"] = await subscribe([cp.stream_port], info["api-b"])
            await eventually(lambda: endpoints(proxies["web-0"]) == 2, timeout=5)
            await eventually(lambda: _both(url), timeout=5)
            assert (await proxy_state(cp, "api-b"))["state"] == "Connected"
        finally:
            for p in proxies.values():
                await p.stop()


async def test_a_sidecar_shutting_down_leaves_the_endpoints_before_its_drain_ends() -> None:
    """SIGTERM's order (`subscribed.shut_down`): the sidecar leaves its stream before it
    drains, and a slow request keeps its drain going for 3 s here: callers stop being sent
    to it at once, not when the drain ends (closing the stream is the signal, ADR 0040)."""
    slow_started = asyncio.Event()

    async def slow_b(request: web.Request) -> web.Response:
        if request.path == "/slow":
            slow_started.set()
            await asyncio.sleep(3.0)
        return web.json_response({"name": "b"})

    async with named_origin("a") as app_a, serve_handler(slow_b) as app_b, \
            running_control_plane() as cp:
        out, info = await _web_and_two_backends(cp, app_a, app_b)
        proxies = {n: await subscribe([cp.stream_port], w) for n, w in info.items()}
        url = f"http://127.0.0.1:{out}"
        try:
            await eventually(lambda: _both(f"{url}/x"), timeout=10)
            b = proxies["api-b"]
            async with aiohttp.ClientSession() as s:
                async def slow_call() -> int:  # round robin: one of two lands on api-b
                    async with s.get(f"{url}/slow", headers={"Host": "api"}) as r:
                        return r.status
                slow = [asyncio.ensure_future(slow_call()) for _ in range(2)]
                await asyncio.wait_for(slow_started.wait(), 5)
                stopping = asyncio.ensure_future(shut_down(b.agent, b.task, b.server, 10.0))
                took = await eventually(lambda: endpoints(proxies["web-0"]) == 1, timeout=5)
                assert took < 2.0, took
                assert not stopping.done()  # still draining the slow request
                assert [await t for t in slow] == [200, 200]  # the drain let it finish
                await stopping
        finally:
            for p in proxies.values():
                await p.stop()


async def _state_is(cp: ControlPlane, name: str, state: str) -> bool:
    return (await proxy_state(cp, name)).get("state") == state


async def _both(url: str) -> bool:
    return set(await names(url, 6)) == {"a", "b"}


async def test_a_silent_sidecar_is_taken_out_after_the_liveness_timeout() -> None:
    async with named_origin("a") as app_a, named_origin("b") as app_b, \
            running_control_plane(stream_liveness_timeout=0.6, stream_ping_interval=0.1) as cp:
        out = free_port()
        await apply(cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
                    workload("api-a", free_port(), app_a, free_port(), app="api"),
                    workload("api-b", free_port(), app_b, free_port(), app="api"),
                    service("api", app="api"), ROUND_ROBIN)
        proxies = {n: await subscribe([cp.stream_port], WorkloadInfo(
            name=n, namespace=NS, address="127.0.0.1")) for n in ("web-0", "api-a", "api-b")}
        try:
            await eventually(lambda: endpoints(proxies["web-0"]) == 2, timeout=10)
            await eventually(lambda: _state_is(cp, "api-b", "Connected"), timeout=10)
            agent = proxies["api-b"].agent
            real = agent._handle

            async def mute(msg: Any) -> Any:  # the host is gone: no pong, no FIN
                return None if isinstance(msg, Ping) else await real(msg)

            agent._handle = mute  # type: ignore[method-assign]
            # ... and stays gone: when the control plane drops the silent stream, the agent's
            # reconnection must not race the check below (port 1 refuses at once).
            agent.addresses = [("127.0.0.1", 1)]
            took = await eventually(lambda: endpoints(proxies["web-0"]) == 1, timeout=5)
            assert 0.5 < took < 3.0
            st = await proxy_state(cp, "api-b")
            assert st["state"] == "Disconnected" and "nothing from the proxy" in st["reason"]
        finally:
            for p in proxies.values():
                await p.stop()


def test_a_liveness_timeout_within_the_ping_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="more than the stream's ping interval"):
        ControlPlane("memory", stream_liveness_timeout=5)


async def test_a_workload_that_never_had_a_proxy_stays_an_endpoint() -> None:
    async with named_origin("a") as app_a, running_control_plane() as cp:
        out = free_port()
        await apply(cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
                    # no proxy: declared with its app's own port (nothing in front of it)
                    {**workload("api-a", app_a, app_a, free_port(), app="api")},
                    service("api", app="api"), ROUND_ROBIN)
        web = await subscribe([cp.stream_port], WorkloadInfo(name="web-0", namespace=NS,
                                                            address="127.0.0.1"))
        try:
            await eventually(lambda: endpoints(web) == 1, timeout=10)
            assert await proxy_state(cp, "api-a") == {}
        finally:
            await web.stop()
