"""Readiness with two control planes on one PostgreSQL (ADR 0040): a sidecar on replica A that
stops leaves the endpoints that replica B compiles for the proxies on B, and comes back when it
reconnects — to B this time."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.controlplane import apply, eventually, named_origin, running_control_plane, subscribe
from tests.support.postgres import PostgresServer, fresh_database, postgres_server
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.proxyconfig.stream import WorkloadInfo

__all__ = ["postgres_server"]  # the fixture, imported so that pytest finds it


@pytest.mark.timeout(60)
async def test_replica_b_compiles_what_replica_a_saw(postgres_server: PostgresServer,
                                                    tmp_path: Path) -> None:
    async with fresh_database(postgres_server) as dsn, named_origin("a") as app_a, \
            named_origin("b") as app_b, running_control_plane(dsn) as cp_a, \
            running_control_plane(dsn) as cp_b:
        out = free_port()
        status, body = await apply(
            cp_a.api_url, workload("web-0", free_port(), 1, out, app="web"),
            workload("api-a", free_port(), app_a, free_port(), app="api"),
            workload("api-b", free_port(), app_b, free_port(), app="api"),
            service("api", app="api"))
        assert status == 200, body

        def info(name: str) -> WorkloadInfo:
            return WorkloadInfo(name=name, namespace=NS, address="127.0.0.1")

        web = await subscribe([cp_b.stream_port], info("web-0"))  # on B
        api_a = await subscribe([cp_a.stream_port], info("api-a"))  # on A
        api_b = await subscribe([cp_a.stream_port], info("api-b"))  # on A

        def endpoints() -> int:
            return sum(len(c.endpoints) for n, c in web.server.clusters.clusters.items()
                       if "api" in n and c.cfg.workload == "")

        try:
            await eventually(lambda: endpoints() == 2, timeout=15)
            assert cp_b.store is not None

            async def connected(name: str) -> bool:
                obj = await cp_b.store.get("Workload", NS, name)  # type: ignore[union-attr]
                return bool(((obj.get("status") or {}).get("proxy") or {}).get(
                    "state") == "Connected")

            await eventually(lambda: connected("api-b"), timeout=10)
            await api_b.stop()  # A sees the stream close; B's compile drops it
            await eventually(lambda: endpoints() == 1, timeout=5)
            st = (await cp_b.store.get("Workload", NS, "api-b"))["status"]["proxy"]
            assert st["state"] == "Disconnected" and st["controlPlane"] == cp_a.instance
            api_b = await subscribe([cp_b.stream_port], info("api-b"))  # back, on B
            await eventually(lambda: endpoints() == 2, timeout=10)
        finally:
            for p in (web, api_a, api_b):
                await p.stop()


@pytest.mark.timeout(60)
async def test_a_proxy_failing_over_to_replica_b_never_leaves_the_endpoints(
        postgres_server: PostgresServer) -> None:
    """ADR 0116: a proxy that kept serving through its replica's stop names its version in
    its hello to B, so B writes it `Connected` at once.  Had B waited for an ACK, the workload
    would have left the endpoints (its version being current, B pushes nothing: no ACK ever)."""
    import asyncio

    async with fresh_database(postgres_server) as dsn, named_origin("a") as app_a, \
            running_control_plane(dsn) as cp_b:
        out = free_port()
        status, body = await apply(
            cp_b.api_url, workload("web-0", free_port(), 1, out, app="web"),
            workload("api-a", free_port(), app_a, free_port(), app="api"),
            service("api", app="api"))
        assert status == 200, body
        assert cp_b.store is not None
        store = cp_b.store

        async def proxy_of(name: str) -> dict[str, str]:
            obj = await store.get("Workload", NS, name)
            return dict((obj.get("status") or {}).get("proxy") or {})

        web = await subscribe([cp_b.stream_port], WorkloadInfo(name="web-0", namespace=NS,
                                                                address="127.0.0.1"))
        seen: list[tuple[str, str]] = []

        async def watch() -> None:
            while True:
                st = await proxy_of("api-a")
                if st and (not seen or seen[-1] != (st["state"], st["session"])):
                    seen.append((st["state"], st["session"]))
                await asyncio.sleep(0.005)

        api_a = None
        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            async with running_control_plane(dsn) as cp_a:
                api_a = await subscribe([cp_a.stream_port, cp_b.stream_port],
                                        WorkloadInfo(name="api-a", namespace=NS,
                                                     address="127.0.0.1"))
                await eventually(lambda: seen[-1:] and seen[-1][0] == "Connected", timeout=15)
                on_a = seen[-1][1]
                seen.clear()  # (its start, on A: out until its first ACK, then in)
            # A stopped (it writes nothing); the proxy, still serving, reconnects to B (a new
            # session: both replicas here have one instance name, same host and pid).
            await eventually(lambda: any(session != on_a for _, session in seen), timeout=15)
            await asyncio.sleep(0.3)
            assert all(state == "Connected" for state, _ in seen), seen
            assert (await proxy_of("api-a"))["state"] == "Connected"
        finally:
            watcher.cancel()
            for p in (web, api_a):
                if p is not None:
                    await p.stop()
