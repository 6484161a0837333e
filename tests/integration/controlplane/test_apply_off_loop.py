"""A long `apply` no longer stops the rest of a real control plane (ADR 0128).

Apply compiles its documents over the whole mesh before it writes them, and while a proxy of
an older build is connected it renders snapshots to tell which document adds what that proxy
lacks (ADR 0125).  That ran on the event loop: `/healthz`, every proxy's stream and every push
waited for it.  Here a `tulle control-plane run` holds a mesh of Services, each with a
workload and an HTTPRoute, an older proxy is connected (a stream client announcing a build
without `session-persistence`, as ADR 0122's tests play one), and one apply that makes a route
sticky among route edits takes more than a second of checks.  Meanwhile `/healthz` and a
stream client's round trip (a Ping to its Pong, read and answered by the session code that
takes ACKs) are sampled.

And the write is still checked against the versions read before the checks: a route deleted
while they run refuses the apply (409), nothing written."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.integration.controlplane.test_negotiation import RawProxy, proxies
from tests.integration.controlplane.test_version_skew import WITHOUT_STICKY
from tests.support.controlplane import apply, auth, control_plane_process
from tests.support.resources import NS, scale_mesh, scale_route

from tulle.proxyconfig.delta import Delta
from tulle.proxyconfig.stream import (
    Ack,
    DeltaMsg,
    Hello,
    Ping,
    Pong,
    Snapshot,
    WorkloadInfo,
    encode,
)

SERVICES = 800
EDITS = 300
"""Route edits in the apply beside the sticky route: the documents the check tells apart."""
LEAST = 0.6
"""Seconds the apply must take for the test to show anything (else the mesh is too small for
this machine): ~2 s on the shared two-CPU machine it was written on."""
FLOOR = 0.3
"""The longest wait allowed, whatever the apply took: a worker thread still takes the GIL, and
a garbage collection on it holds the loop too (~0.1 s at this size)."""


async def healthz(api: str, stop: asyncio.Event, out: list[float]) -> None:
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            t = time.perf_counter()
            async with s.get(f"{api}/healthz") as r:
                assert r.status == 200
            out.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)


async def round_trips(proxy: RawProxy, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        proxy.writer.write(encode(Ping()))
        while not isinstance(await proxy.next(60), Pong):
            pass  # (a stats request)
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0.01)


async def settled(api: str, proxy: RawProxy) -> None:
    """Until the control plane is done with the mesh (its virtual IPs, the proxy's arrival):
    each push ACKed, then nothing for a second, and the proxy runs what it should."""
    async with asyncio.timeout(60):
        while True:
            try:
                msg = await proxy.next(1.0)
            except TimeoutError:
                row = (await proxies(api))["w-0"]
                if row["ackedVersion"] == row["desiredVersion"]:
                    return
                continue
            if isinstance(msg, DeltaMsg | Snapshot):
                version = (msg.version if isinstance(msg, Snapshot)
                           else msgspec.json.decode(msg.delta, type=Delta).version)
                proxy.writer.write(encode(Ack(version=version)))


async def timed_apply(api: str, docs: list[dict[str, Any]],
                      dry_run: bool) -> tuple[int, Any, float]:
    t = time.perf_counter()
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.post(
            f"{api}/api/v1/apply", params={"dryRun": str(dry_run).lower()},
            json={"documents": docs}) as r:
        return r.status, await r.json(), time.perf_counter() - t


async def test_a_long_apply_leaves_healthz_and_the_stream_answering(tmp_path: Path) -> None:
    async with control_plane_process("memory", tmp_path) as cp:
        docs = scale_mesh(SERVICES)
        for i in range(0, len(docs), 1500):
            status, body = await apply(cp.api, *docs[i:i + 1500])
            assert status == 200, body
        old = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="w-0", namespace=NS), features=WITHOUT_STICKY), cp.api)
        try:
            msg = await old.next(30)
            assert isinstance(msg, Snapshot), msg
            old.writer.write(encode(Ack(version=msg.version)))
            await settled(cp.api, old)
            change = [scale_route(0, 0, sticky=True),
                      *(scale_route(i, i - 1) for i in range(1, EDITS + 1))]

            stop = asyncio.Event()
            hz: list[float] = []
            rtt: list[float] = []
            samplers = asyncio.gather(healthz(cp.api, stop, hz), round_trips(old, stop, rtt))
            await asyncio.sleep(0.2)
            status, body, took = await timed_apply(cp.api, change, dry_run=True)
            stop.set()
            await samplers
            assert status == 200, body
            warned = {r["name"] for r in body["results"] if r.get("warnings")}
            assert "r-0" in warned, body
            assert took >= LEAST, f"the apply took {took:.2f}s: too small a mesh to show it"
            # Before: one sample waited for the whole apply (the loop was held throughout).
            bound = max(FLOOR, took / 4)
            assert max(hz) < bound, (f"/healthz waited {max(hz):.2f}s during an apply of "
                                     f"{took:.2f}s ({len(hz)} samples)")
            assert max(rtt) < bound, (f"a stream round trip waited {max(rtt):.2f}s during "
                                      f"an apply of {took:.2f}s ({len(rtt)} samples)")
            assert len(hz) >= 10 and len(rtt) >= 10, (len(hz), len(rtt))

            # A route of the apply deleted while its checks run: 409, nothing written.
            job = asyncio.ensure_future(timed_apply(cp.api, change, dry_run=False))
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession(headers=auth(cp.api)) as s, s.delete(
                    f"{cp.api}/api/v1/resources/httproutes/r-1", params={"namespace": NS}) as r:
                assert r.status == 200, await r.text()
            status, body, took = await job
            assert status == 409, body
            (detail,) = body["details"]
            assert detail["name"] == "r-1", body
            assert "deleted during this apply" in detail["errors"][0]["message"], body
            async with aiohttp.ClientSession(headers=auth(cp.api)) as s, s.get(
                    f"{cp.api}/api/v1/resources/httproutes/r-0", params={"namespace": NS}) as r:
                assert "sessionPersistence" not in await r.text()
        finally:
            old.close()
