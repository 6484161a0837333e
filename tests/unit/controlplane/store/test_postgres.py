"""PostgreSQL-only behaviour: several store instances (control-plane replicas) on one database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.support.postgres import PostgresServer, fresh_schema, postgres_server  # noqa: F401
from tests.support.store_checks import cancel_at_every_turn

from tulle.controlplane.store import ConflictError, ResourceStore, WatchEvent, open_store

NO_POLL = 30.0


@pytest.fixture
async def dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:  # noqa: F811
    async with fresh_schema(postgres_server) as url:
        yield url


def svc(name: str, count: int = 0) -> dict[str, object]:
    return {"apiVersion": "tulle.io/v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"count": count}}


async def next_event(events: AsyncIterator[WatchEvent]) -> WatchEvent:
    async with asyncio.timeout(5):
        return await anext(events)


@contextlib.asynccontextmanager
async def replicas(dsn: str, n: int) -> AsyncIterator[list[ResourceStore]]:
    # Opened together: schema creation must be safe when replicas start at once.
    stores = list(await asyncio.gather(*(open_store(dsn, poll_interval=NO_POLL) for _ in range(n))))
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def test_two_replicas_see_each_others_writes_through_watch(dsn: str) -> None:
    async with replicas(dsn, 2) as (one, two):
        async with contextlib.aclosing(one.watch(since_revision=0)) as on_one, \
                contextlib.aclosing(two.watch(since_revision=0)) as on_two:
            created = await two.create(svc("a"))
            event = await next_event(on_one)
            assert (event.type, event.revision, event.object) == ("ADDED", 1, created)
            assert (await next_event(on_two)).revision == 1

            updated = await one.update({**created, "spec": {"count": 1}})
            event = await next_event(on_two)
            assert (event.type, event.object) == ("MODIFIED", updated)
            assert (await next_event(on_one)).revision == 2

            await two.delete("Service", "ns", "a")
            assert (await next_event(on_one)).type == "DELETED"
        with pytest.raises(ConflictError):  # one's copy is stale after two's delete+recreate
            await two.create(svc("a"))
            await one.update(updated)


async def test_replicas_writing_concurrently_lose_no_update(dsn: str) -> None:
    async with replicas(dsn, 2) as stores:
        await stores[0].create(svc("counter"))

        async def increment(store: ResourceStore, times: int) -> None:
            for _ in range(times):
                for _attempt in range(1000):
                    current = await store.get("Service", "ns", "counter")
                    current["spec"]["count"] += 1
                    try:
                        await store.update(current)
                        break
                    except ConflictError:
                        pass

        await asyncio.gather(*(increment(stores[i % 2], 5) for i in range(10)))
        final = await stores[1].get("Service", "ns", "counter")
        assert final["spec"]["count"] == 50
        assert final["metadata"]["resourceVersion"] == "51"


async def test_watch_survives_losing_its_listen_connection(dsn: str, postgres_server: PostgresServer) -> None:  # noqa: F811
    async with replicas(dsn, 2) as (watcher_side, writer_side), \
            contextlib.aclosing(watcher_side.watch()) as events:
        pending = asyncio.ensure_future(next_event(events))
        await asyncio.sleep(0.05)
        listening = ("SELECT count(*) FROM pg_stat_activity"
                     " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
        admin = await asyncpg.connect(postgres_server.dsn())
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
            assert killed == 2
            async with asyncio.timeout(5):  # both stores re-LISTEN on new connections
                while await admin.fetchval(listening) < 2:
                    await asyncio.sleep(0.02)
        finally:
            await admin.close()
        await writer_side.create(svc("while-deaf"))
        event = await pending  # heard through the new LISTEN connection, not the 30 s poll
        assert event.object["metadata"]["name"] == "while-deaf"
        await writer_side.create(svc("after"))
        assert (await next_event(events)).object["metadata"]["name"] == "after"


@pytest.mark.parametrize("op", ["list", "create"])
async def test_a_call_cancelled_at_any_point_leaves_the_store_usable(dsn: str, op: str) -> None:
    """What broke the SQLite store (its test says how) holds on PostgreSQL too."""
    store = await open_store(dsn)
    try:
        await cancel_at_every_turn(store, op)
    finally:
        await store.close()
