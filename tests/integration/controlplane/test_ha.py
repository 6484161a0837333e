"""High availability: two control planes on one PostgreSQL, one is SIGKILLed, no request fails.

Both replicas run as real processes (`tulle control-plane run --store postgresql://...`), each
with its own API and stream port.  Four proxies run in the test: `web-a` and `api-v1`
subscribe with the addresses [A, B], `web-b` and `api-v2` with [B, A], so both replicas serve
proxies at once.  Clients call the `api` Service through `web-a`'s and `web-b`'s outbound
listeners while A is killed; every request must get its 200 from the right origin, the
proxies that were on A must show up on B with the current version ACKed, and a change applied
through B must reach every proxy.  Before that, a change applied through A must reach B's
proxies: B learns of it from the store's LISTEN/NOTIFY feed, not from its 5 s poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from tests.support.controlplane import (
    ControlPlaneProcess,
    apply,
    eventually,
    named_origin,
    subscribe,
)
from tests.support.postgres import PostgresServer, fresh_database, postgres_server
from tests.support.proxy import free_port
from tests.support.resources import NS, route, service, workload

from tulle.proxyconfig.stream import WorkloadInfo

__all__ = ["postgres_server"]  # the fixture, imported so that pytest finds it

REQUESTS_PER_CLIENT = 150
PACE_S = 0.015
"""150 requests 15 ms apart: about 3 s of traffic per client, A dies after the first third."""
KILL_AFTER = 50


@contextlib.contextmanager
def replica(name: str, store: str, workdir: Path) -> Iterator[ControlPlaneProcess]:
    """One `tulle control-plane run` child process named `name`; SIGKILLed on the way out."""
    r = ControlPlaneProcess(store, workdir, "--instance", name, "--log-level", "warning")
    r.start()
    try:
        yield r
    finally:
        r.kill()


async def served_by(port: int, path: str, origin: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}{path}", headers={"Host": "api"}) as r:
            if r.status != 200:
                return False
            body = await r.json()
    except aiohttp.ClientConnectionError:
        return False  # the outbound listener is not configured yet
    return bool(body["name"] == origin and body["path"] == path)


async def steady_traffic(port: int, origin: str, passed_kill_mark: asyncio.Event) -> list[str]:
    """REQUESTS_PER_CLIENT sequential keep-alive requests; returns what went wrong (nothing)."""
    problems: list[str] = []
    async with aiohttp.ClientSession() as s:
        for i in range(REQUESTS_PER_CLIENT):
            path = f"/echo/{i}"
            try:
                async with s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": "api"},
                                 timeout=aiohttp.ClientTimeout(total=5)) as r:
                    body = await r.json() if r.status == 200 else await r.text()
                    if r.status != 200 or body != {"name": origin, "path": path}:
                        problems.append(f"request {i}: {r.status} {body!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problems.append(f"request {i}: {type(exc).__name__}: {exc}")
            if i + 1 == KILL_AFTER:
                passed_kill_mark.set()
            await asyncio.sleep(PACE_S)
    return problems


@pytest.mark.timeout(120)
async def test_kill_one_of_two_control_planes_no_request_fails(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    out_a, out_b = free_port(), free_port()
    api_v1_port, api_v2_port = free_port(), free_port()
    async with fresh_database(postgres_server) as dsn, named_origin("v1") as app_v1, \
            named_origin("v2") as app_v2:
        with replica("cp-a", dsn, tmp_path) as a, replica("cp-b", dsn, tmp_path) as b:
            await a.wait_ready()
            await b.wait_ready()
            status, body = await apply(
                a.api,
                workload("web-a", free_port(), 1, out_a, app="web"),
                workload("web-b", free_port(), 1, out_b, app="web"),
                workload("api-v1", api_v1_port, app_v1, free_port(), app="api", version="v1"),
                workload("api-v2", api_v2_port, app_v2, free_port(), app="api", version="v2"),
                service("api", app="api", version="v1"),
                service("api-v2", app="api", version="v2"))
            assert status == 200, body

            def info(name: str) -> WorkloadInfo:
                return WorkloadInfo(name=name, namespace=NS, address="127.0.0.1")

            a_first, b_first = [a.stream_port, b.stream_port], [b.stream_port, a.stream_port]
            proxies = [await subscribe(a_first, info("web-a")),
                       await subscribe(a_first, info("api-v1")),
                       await subscribe(b_first, info("web-b")),
                       await subscribe(b_first, info("api-v2"))]
            try:
                await eventually(lambda: served_by(out_a, "/echo/0", "v1"), timeout=10)
                await eventually(lambda: served_by(out_b, "/echo/0", "v1"), timeout=10)
                # Both replicas serve proxies at once (api-v2 takes no traffic yet: it may
                # still be registering, its certificate being signed).
                async def on_their_replicas() -> bool:
                    on_a, on_b = await a.proxies(), await b.proxies()
                    return all(
                        seen.get(f"{NS}/{name}", {}).get("connected") is True
                        and seen[f"{NS}/{name}"].get("controlPlane") == cp
                        for seen, cp, names in ((on_a, "cp-a", ("web-a", "api-v1")),
                                                (on_b, "cp-b", ("web-b", "api-v2")))
                        for name in names)

                await eventually(on_their_replicas, timeout=10)

                # A change applied through A reaches B's proxies (B hears it by NOTIFY, inside
                # the store's 5 s poll interval; that NOTIFY alone wakes a watcher is
                # tests/unit/controlplane/store/test_postgres.py's, with polling off: here the
                # margin is for a loaded CI machine, where 2 s was seen to be too tight).
                status, body = await apply(a.api, route("canary", ("/canary", "api-v2"), ("/", "api")))
                assert status == 200, body
                await eventually(lambda: served_by(out_b, "/canary/1", "v2"), timeout=4.0)
                await eventually(lambda: served_by(out_a, "/canary/1", "v2"), timeout=4.0)

                async def same_versions() -> bool:
                    on_a, on_b = await a.proxies(), await b.proxies()
                    return all(
                        on_a[k]["desiredVersion"] == on_b[k]["desiredVersion"]
                        and (on_a if k in (f"{NS}/web-a", f"{NS}/api-v1") else on_b)[k][
                            "ackedVersion"] == on_b[k]["desiredVersion"]
                        for k in on_b)

                # Both replicas compile the same bytes, so a proxy moving over has nothing to
                # re-apply.
                await eventually(same_versions, timeout=5.0)

                # Steady traffic through both clients; A dies a third of the way in.
                mark_a, mark_b = asyncio.Event(), asyncio.Event()
                clients = [asyncio.ensure_future(steady_traffic(out_a, "v1", mark_a)),
                           asyncio.ensure_future(steady_traffic(out_b, "v1", mark_b))]
                await mark_a.wait()
                await mark_b.wait()
                a.kill()
                problems = [p for c in await asyncio.gather(*clients) for p in c]
                assert problems == [], problems

                # The proxies that were on A are on B now, running the current version.
                async def all_on_b() -> bool:
                    on_b = await b.proxies()
                    return len(on_b) == 4 and all(
                        p["connected"] and p["controlPlane"] == "cp-b"
                        and p["ackedVersion"] == p["desiredVersion"] for p in on_b.values())

                await eventually(all_on_b, timeout=5.0)

                # A change through B reaches every proxy: traffic follows within a second.
                status, body = await apply(b.api, route("api-route", ("/echo", "api-v2")))
                assert status == 200, body
                await eventually(lambda: served_by(out_a, "/echo/2", "v2"), timeout=1.0)
                await eventually(lambda: served_by(out_b, "/echo/2", "v2"), timeout=1.0)
                await eventually(all_on_b, timeout=2.0)
            finally:
                for p in proxies:
                    await p.stop()
