"""What the control plane shows of a proxy that said `Draining` (ADR 0092), once its stream is
gone or another stream of its workload took over: a real control plane, real agents, and a
raw stream client where a test needs two streams of one workload.

* A sidecar that drained and left (or was killed mid-drain) is no longer shown `draining` by
  `tulle get workloads` / `describe service`, nor `draining` in `/api/v1/proxies`: `draining`
  says the proxy is still on its stream, shutting down.
* A `Draining` from a workload's older stream, after a newer stream of that workload took over
  (a surge replacement, a node agent rolled with maxSurge), takes nothing out (the store write
  is by session) and marks nothing: the newer proxy is not shown draining."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.integration.controlplane.test_readiness import (
    _both,
    _web_and_two_backends,
    endpoints,
    proxy_state,
)
from tests.support.cli import tulle
from tests.support.controlplane import (
    auth,
    eventually,
    named_origin,
    running_control_plane,
    subscribe,
)
from tests.support.resources import NS

from tulle.controlplane.main import ControlPlane
from tulle.dataplane.subscribed import shut_down
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Ack,
    Draining,
    Hello,
    Snapshot,
    StatsRequest,
    WorkloadInfo,
    encode,
)


async def _proxies(api: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/proxies") as r:
        return {p["name"]: p for p in (await r.json())["items"]}


@pytest.mark.parametrize("how", ["shut_down", "killed_mid_drain"])
async def test_a_sidecar_gone_after_draining_is_not_shown_draining(how: str) -> None:
    async with named_origin("a") as app_a, named_origin("b") as app_b, \
            running_control_plane() as cp:
        out, info = await _web_and_two_backends(cp, app_a, app_b)
        proxies = {n: await subscribe([cp.stream_port], w) for n, w in info.items()}
        try:
            await eventually(lambda: _both(f"http://127.0.0.1:{out}/x"), timeout=10)
            b = proxies["api-b"]
            await eventually(lambda: b.agent._drain_taken, timeout=10)  # (StatsRequest in)
            if how == "shut_down":
                await shut_down(b.agent, b.task, b.server, 2.0)
            else:  # said Draining, then killed before its drain ended: the stream just ends
                assert await b.agent.announce_draining()
                await eventually(lambda: endpoints(proxies["web-0"]) == 1, timeout=5)
                await b.stop()
            assert b.agent.draining  # (the Draining path was taken)

            async def left() -> bool:
                return not (await _proxies(cp.api_url))["api-b"]["connected"]
            await eventually(left, timeout=5)
            await asyncio.sleep(0.3)  # (the presence writer's queue)
            assert endpoints(proxies["web-0"]) == 1
            st = await proxy_state(cp, "api-b")
            assert st["state"] == "Disconnected"
            # Gone, not draining: the stored reason says how the stream ended.
            assert not st["reason"].startswith("draining"), st
            assert not (await _proxies(cp.api_url))["api-b"]["draining"]
            code, text, err = await tulle(cp.api_url, "get", "workloads", "-n", NS)
            assert code == 0, err
            row = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["api-b"])
            assert "draining" not in row and "disconnected" in row, row
            code, text, err = await tulle(cp.api_url, "describe", "service", "api", "-n", NS)
            assert code == 0, err
            row = next(ln for ln in text.splitlines() if ln.split()[:1] == ["api-b"])
            assert "draining" not in row, row
        finally:
            for p in proxies.values():
                await p.stop()


async def _raw(cp: ControlPlane, w: WorkloadInfo) -> RawProxy:
    """A stream of `w`, admitted, its snapshot ACKed, up to the `StatsRequest`."""
    raw = await RawProxy.connect(cp.stream_port, Hello(
        workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED)),
        api=cp.api_url)
    while not isinstance(msg := await raw.next(), StatsRequest):
        if isinstance(msg, Snapshot):
            raw.writer.write(encode(Ack(version=msg.version)))
    assert msg.draining
    return raw


async def test_draining_on_an_older_stream_does_not_mark_the_newer_one() -> None:
    async with named_origin("a") as app_a, named_origin("b") as app_b, \
            running_control_plane() as cp:
        out, info = await _web_and_two_backends(cp, app_a, app_b)
        web = await subscribe([cp.stream_port], info["web-0"])
        api_a = await subscribe([cp.stream_port], info["api-a"])
        old = new = None
        try:
            old = await _raw(cp, info["api-b"])
            new = await _raw(cp, info["api-b"])  # takes api-b over
            await eventually(lambda: endpoints(web) == 2, timeout=10)
            old.writer.write(encode(Draining()))  # the old one stops
            await asyncio.sleep(0.5)
            # The store is right: the newer stream's Connected stands, api-b is an endpoint.
            assert (await proxy_state(cp, "api-b"))["state"] == "Connected"
            assert endpoints(web) == 2
            # ... and so is what the control plane shows of the proxy on that stream.
            p = (await _proxies(cp.api_url))["api-b"]
            assert p["connected"] and not p["draining"], p
            code, text, err = await tulle(cp.api_url, "get", "proxies", "-n", NS)
            assert code == 0, err
            row = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["api-b"])
            assert "draining" not in row, row
        finally:
            for r in (old, new):
                if r is not None:
                    r.close()
            await web.stop()
            await api_a.stop()


async def test_a_ca_rotation_does_not_wait_for_a_draining_proxy() -> None:
    """A draining proxy takes no trust update (it drains with what it runs): the rotation's
    progress counts the proxies that can move, not one that is leaving."""
    async with named_origin("a") as app_a, named_origin("b") as app_b, \
            running_control_plane() as cp:
        _, info = await _web_and_two_backends(cp, app_a, app_b)
        raw = await _raw(cp, info["api-b"])
        try:
            names = {v.name for v in cp.ca_keeper.local()}
            assert any("api-b" in n for n in names), names
            raw.writer.write(encode(Draining()))

            async def left() -> bool:
                return not any("api-b" in v.name for v in cp.ca_keeper.local())
            await eventually(left, timeout=5)
        finally:
            raw.close()
