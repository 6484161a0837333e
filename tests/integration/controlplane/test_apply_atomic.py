"""`tulle apply` is one transaction: a control plane SIGKILLed in the middle of a 3,000-document
apply leaves none of it or all of it, never part (the attack: 1,358 of 3,000 were stored).

The control plane runs as a real process on SQLite, then on PostgreSQL.  The test sends the
apply and watches the store from outside: it kills the process (SIGKILL, its whole group) the
moment a write transaction is open (SQLite: the write lock is taken; PostgreSQL: the revision
row is locked) or the first written document is visible.  Then a fresh control plane on the
same store must list 0 or 3,000 Services, and keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from tests.support.controlplane import ControlPlaneProcess, apply, auth, control_plane_process
from tests.support.postgres import fresh_schema, postgres_server
from tests.support.resources import service

__all__ = ["postgres_server"]  # the fixture, imported so that pytest finds it

N = 3000
INTO_WRITES = 0.03
"""Seconds after the first write lock is seen that the process is killed (unless a written
document shows up first): late enough that one-by-one writes would have stored some, early
enough to fall inside a batch's transaction."""
WATCH_FOR = 20.0
"""Seconds the test watches for the write phase before giving up (it takes ~1 s to arrive)."""


def sqlite_probe(path: Path) -> Callable[[], Awaitable[str | None]]:
    """'writing' while another connection holds the write lock, 'visible' once a Service is
    stored, else None."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0, isolation_level=None)
    rw = sqlite3.connect(str(path), timeout=0, isolation_level=None)

    async def probe() -> str | None:
        try:
            rw.execute("BEGIN IMMEDIATE")
            rw.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                return "writing"
            raise
        (n,) = db.execute("SELECT count(*) FROM resources WHERE kind = 'Service'").fetchone()
        return "visible" if n else None

    return probe


async def count_services(api: str) -> int:
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.get(
            f"{api}/api/v1/resources/services", params={"namespace": "bulk"}) as r:
        assert r.status == 200, await r.text()
        return len((await r.json())["items"])


async def kill_mid_apply(cp: ControlPlaneProcess,
                         probe: Callable[[], Awaitable[str | None]]) -> str:
    docs = [service(f"s{i}", ns="bulk", app=f"s{i}") for i in range(N)]
    sending = asyncio.ensure_future(apply(cp.api, *docs))
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + WATCH_FOR
        writing_since: float | None = None
        while loop.time() < end:
            seen = await probe()
            now = loop.time()
            if seen == "writing" and writing_since is None:
                writing_since = now
            if seen == "visible" or (writing_since is not None
                                     and now - writing_since >= INTO_WRITES):
                cp.kill()
                return f"{seen} {1000 * (now - (writing_since or now)):.0f} ms into the writes"
            if sending.done():
                raise AssertionError(f"the apply finished unseen: {sending.result()[0]}")
            await asyncio.sleep(0.001)
        raise AssertionError(f"no write phase within {WATCH_FOR}s:\n{cp.log()}")
    finally:
        with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
            sending.cancel()
            await sending


async def check_none_or_all(store: str, workdir: Path, when: str) -> None:
    async with control_plane_process(store, workdir) as again:
        stored = await count_services(again.api)
        assert stored in (0, N), f"killed when {when}: {stored} of {N} documents stored"
        # The store is intact and writable: the same apply completes (or is all unchanged).
        status, body = await apply(again.api, *(service(f"s{i}", ns="bulk", app=f"s{i}")
                                                for i in range(3)))
        assert status == 200, body
        assert await count_services(again.api) in (3, N)


@pytest.mark.timeout(90)
async def test_sigkill_during_a_3000_document_apply_on_sqlite(tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'cp.db'}"
    async with control_plane_process(store, tmp_path) as cp:
        when = await kill_mid_apply(cp, sqlite_probe(tmp_path / "cp.db"))
    await check_none_or_all(store, tmp_path, when)


@contextlib.asynccontextmanager
async def pg_probe(dsn: str) -> AsyncIterator[Callable[[], Awaitable[str | None]]]:
    conn = await asyncpg.connect(dsn)

    async def probe() -> str | None:
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM store_revision FOR UPDATE NOWAIT")
        except asyncpg.LockNotAvailableError:
            return "writing"
        n = await conn.fetchval("SELECT count(*) FROM resources WHERE kind = 'Service'")
        return "visible" if n else None

    try:
        yield probe
    finally:
        await conn.close()


@pytest.mark.timeout(90)
async def test_sigkill_during_a_3000_document_apply_on_postgres(
        postgres_server: Any, tmp_path: Path) -> None:
    async with fresh_schema(postgres_server) as dsn:
        async with control_plane_process(dsn, tmp_path) as cp, pg_probe(dsn) as probe:
            when = await kill_mid_apply(cp, probe)
        await check_none_or_all(dsn, tmp_path, when)
