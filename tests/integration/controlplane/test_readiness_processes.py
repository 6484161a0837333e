"""Readiness with a real sidecar process (`tulle proxy run --control-plane`), ADR 0040: SIGTERM
(a drain) and SIGKILL (a crash) take its workload out of the Service's endpoints at once;
SIGSTOP (a host that vanished without a word) after the stream's liveness timeout.  The
callers' proxy sees the endpoint leave, and no request through it gets a 503 once it left."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from tests.support.controlplane import (
    SubscribedProxy,
    apply,
    eventually,
    issue_token,
    named_origin,
    routes_with,
    running_control_plane,
    subscribe,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.controlplane.main import ControlPlane
from tulle.proxyconfig.stream import WorkloadInfo

TULLE = str(Path(sys.executable).parent / "tulle")


@contextlib.asynccontextmanager
async def sidecar(cp: ControlPlane, name: str) -> AsyncIterator[asyncio.subprocess.Process]:
    token = await issue_token(cp.api_url, WorkloadInfo(name=name, namespace=NS))
    proc = await asyncio.create_subprocess_exec(
        TULLE, "proxy", "run", "--control-plane", f"127.0.0.1:{cp.stream_port}",
        "--workload", name, "--namespace", NS, "--address", "127.0.0.1", "--admin-port", "0",
        "--log-level", "warning", env={**os.environ, "TULLE_BOOTSTRAP_TOKEN": token},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            await proc.wait()


async def state(cp: ControlPlane, name: str) -> str:
    assert cp.store is not None
    obj = await cp.store.get("Workload", NS, name)
    return str(((obj.get("status") or {}).get("proxy") or {}).get("state", ""))


def endpoints(web: SubscribedProxy) -> int:
    return sum(len(c.endpoints) for n, c in web.server.clusters.clusters.items()
               if "api" in n and c.cfg.workload == "")


async def statuses(url: str, n: int) -> list[int]:
    async with aiohttp.ClientSession() as s:
        out = []
        for _ in range(n):
            async with s.get(url, headers={"Host": "api"}) as r:
                out.append(r.status)
        return out


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("sig", "within"), [(signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0),
                                             (signal.SIGSTOP, 4.0)],
                         ids=["sigterm", "sigkill", "sigstop"])
async def test_a_stopped_sidecar_process_leaves_the_endpoints(sig: signal.Signals,
                                                              within: float) -> None:
    async with named_origin("a") as app_a, named_origin("b") as app_b, running_control_plane(
            stream_liveness_timeout=1.0, stream_ping_interval=0.2) as cp:
        out = free_port()
        status, body = await apply(
            cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
            workload("api-a", free_port(), app_a, free_port(), app="api"),
            workload("api-b", free_port(), app_b, free_port(), app="api"),
            service("api", app="api"))
        assert status == 200, body
        web = await subscribe([cp.stream_port], WorkloadInfo(name="web-0", namespace=NS,
                                                            address="127.0.0.1"))
        url = f"http://127.0.0.1:{out}/x"
        try:
            async with sidecar(cp, "api-a"), sidecar(cp, "api-b") as b:
                await eventually(lambda: endpoints(web) == 2, timeout=20)
                for name in ("api-a", "api-b"):
                    await eventually(lambda n=name: _is(cp, n, "Connected"), timeout=20)
                # (not a config from before: each sidecar is out while starting, ADR 0116)
                await eventually(lambda: routes_with(cp, "web-0", ("api-a", "api-b"), NS),
                                 timeout=10)
                assert endpoints(web) == 2
                await eventually(lambda: _all_ok(url), timeout=20)
                os.kill(b.pid, sig)
                took = await eventually(lambda: endpoints(web) == 1, timeout=10)
                assert took < within, took
                if sig == signal.SIGSTOP:  # silent, not closed: the liveness timeout (1 s)
                    assert took > 0.5, took
                assert await state(cp, "api-b") == "Disconnected"
                assert set(await statuses(url, 50)) == {200}
        finally:
            await web.stop()


async def _is(cp: ControlPlane, name: str, want: str) -> bool:
    return await state(cp, name) == want


async def _all_ok(url: str) -> bool:
    try:
        return set(await statuses(url, 6)) == {200}
    except aiohttp.ClientError:
        return False
