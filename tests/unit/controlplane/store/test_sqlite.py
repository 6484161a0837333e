"""SQLite-only behaviour: the file outlives the store, in WAL mode."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from tests.support.store_checks import cancel_at_every_turn

from tulle.controlplane.store import ExpiredError, open_store
from tulle.controlplane.store.sqlite import SqliteStore


def thing(name: str) -> dict[str, object]:
    return {"apiVersion": "tulle.io/v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"ports": [{"port": 80}]}}


async def test_reopen_keeps_objects_revision_and_change_log(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "store.db"
    store = await open_store(f"sqlite://{path}", changes_retained=3)
    a = await store.create(thing("a"))
    await store.create(thing("b"))
    await store.delete("Service", "ns", "b")
    await store.update({**a, "spec": {"ports": []}})
    items_before, revision = await store.list()
    await store.close()

    reopened = await open_store(f"sqlite:{path}", changes_retained=3)
    try:
        assert await reopened.list() == (items_before, revision)
        assert revision == 4
        c = await reopened.create(thing("c"))
        assert c["metadata"]["resourceVersion"] == "5", "the revision must continue, not restart"
        with pytest.raises(ExpiredError):  # compaction state survived too: only 3..5 are kept
            await anext(reopened.watch(since_revision=1))
        async with contextlib.aclosing(reopened.watch(since_revision=2)) as events:
            got = [await anext(events) for _ in range(3)]
        assert [(e.type, e.revision) for e in got] == [("DELETED", 3), ("MODIFIED", 4), ("ADDED", 5)]
    finally:
        await reopened.close()


async def test_database_is_in_wal_mode_with_bounded_change_log(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SqliteStore.open(path, changes_retained=10)
    for i in range(25):
        await store.create(thing(f"s{i}"))
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        kept = db.execute("SELECT count(*), min(revision), max(revision) FROM changes").fetchone()
        assert kept == (10, 16, 25)
        assert db.execute("SELECT revision, compacted FROM store_revision").fetchone() == (25, 15)


async def test_two_stores_on_one_file_stay_consistent(tmp_path: Path) -> None:
    """Not a supported deployment (docs/reference/stores.md), but it must not corrupt."""
    url = f"sqlite:{tmp_path}/store.db"
    first, second = await open_store(url), await open_store(url)
    try:
        a = await first.create(thing("a"))
        b = await second.create(thing("b"))
        assert (a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]) == ("1", "2")
        assert [o["metadata"]["name"] for o in (await first.list())[0]] == ["a", "b"]
    finally:
        await first.close()
        await second.close()



@pytest.mark.parametrize("op", ["list", "create"])
async def test_a_call_cancelled_at_any_point_leaves_the_store_usable(tmp_path: Path,
                                                                     op: str) -> None:
    """A caller cancelled mid-call (an API client that disconnects during a list: Starlette
    cancels its handler) left the connection inside the transaction its `BEGIN` opened:
    aiosqlite runs a queued statement even when its await is cancelled, and every later call
    failed with "cannot start a transaction within a transaction" -- the whole API, for good."""
    store = await open_store(f"sqlite:{tmp_path / 'store.db'}")
    try:
        await cancel_at_every_turn(store, op)
    finally:
        await store.close()
