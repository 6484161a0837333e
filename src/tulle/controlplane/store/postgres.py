"""The PostgreSQL store: for several control-plane replicas on one database.

Same layout as the SQLite store (`store_revision`, `resources`, `changes`).  A write is one
transaction that bumps the counter row (`UPDATE store_revision ... RETURNING`), reads and
writes the object, appends its change row, compacts the log and `pg_notify`s the revision.
A batch bumps the counter once by its number of writes and writes all its rows in the same
transaction: other readers see all of it or nothing, also if the process dies mid-way.
The counter row's lock serialises writers, so revisions commit in the order they are handed
out and have no gaps: a reader that sees revision N committed has every revision below N
(a plain SEQUENCE would hand out N+1 to a transaction that may commit before N's, and a watcher
reading `revision > last` would skip N for good; see docs/adr/0008-stores.md).

Watch: each store instance LISTENs on one dedicated connection; a notification only wakes the
local watchers, which then read `changes` after the last revision they saw.  Notifications
from other replicas work the same way, so two control planes see each other's writes.  If the
LISTEN connection drops it is re-opened with backoff, and watchers re-read on reconnect and at
least every `poll_interval` anyway.

PgBouncer in transaction mode: the pool is opened with `statement_cache_size=0` (no named
prepared statements survive a transaction), and every multi-statement operation is one
transaction.  LISTEN needs a session: point the store at PostgreSQL directly or through a
session-mode pool; behind a transaction-mode pool watchers still work, at `poll_interval` pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

import asyncpg

from tulle.controlplane.store.base import DEFAULT_CHANGES_RETAINED, DEFAULT_POLL_INTERVAL, StoreBase
from tulle.controlplane.store.errors import ExpiredError
from tulle.controlplane.store.objects import Change, Key, Mutation, decode, encode
from tulle.controlplane.store.protocol import Obj, WatchEvent
from tulle.controlplane.store.watch import ChangeBatch

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHANNEL = "tulle_store_changes"
MIGRATION_LOCK = 0x7475_6C6C_6501  # pg_advisory_xact_lock key held while creating the schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_revision (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision bigint NOT NULL,
    compacted bigint NOT NULL,
    schema_version integer NOT NULL
);
INSERT INTO store_revision (id, revision, compacted, schema_version) VALUES (true, 0, 0, 1)
    ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS resources (
    kind text NOT NULL,
    namespace text NOT NULL,
    name text NOT NULL,
    revision bigint NOT NULL,
    object text NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS changes (
    revision bigint PRIMARY KEY,
    type text NOT NULL,
    kind text NOT NULL,
    namespace text NOT NULL,
    name text NOT NULL,
    object text NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_kind ON changes (kind, revision);
"""

_BUMP = (
    "UPDATE store_revision SET revision = revision + 1,"
    " compacted = greatest(compacted, revision + 1 - $1) RETURNING revision, compacted"
)
_SELECT = "SELECT object FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3"
# Everything after the mutation in one statement (one round trip): the row, the change-log
# entry, compaction and the notification.  $1-$3 key, $4 revision, $5 object, $6 type,
# $7 compacted, $8 channel, $9 revision as text.
_TAIL = """
    l AS (INSERT INTO changes (revision, type, kind, namespace, name, object)
          VALUES ($4, $6, $1, $2, $3, $5)),
    c AS (DELETE FROM changes WHERE revision <= $7)
SELECT pg_notify($8, $9)
"""
_UPSERT = (
    "WITH w AS (INSERT INTO resources (kind, namespace, name, revision, object)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, namespace, name) DO UPDATE"
    " SET revision = EXCLUDED.revision, object = EXCLUDED.object)," + _TAIL
)
_DELETE = (
    "WITH w AS (DELETE FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3"
    ")," + _TAIL
)

# A batch: the counter bumped once by the number of writes, the current rows read in one query,
# then rows, change-log entries, compaction and the notification in one statement each.
_BUMP_N = (
    "UPDATE store_revision SET revision = revision + $2,"
    " compacted = greatest(compacted, revision + $2 - $1) RETURNING revision, compacted"
)
_KEYS = "SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
_SELECT_MANY = (
    "SELECT kind, namespace, name, object FROM resources"
    f" WHERE (kind, namespace, name) IN ({_KEYS})"
)
_UPSERT_MANY = (
    "INSERT INTO resources (kind, namespace, name, revision, object)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])"
    " ON CONFLICT (kind, namespace, name) DO UPDATE"
    " SET revision = EXCLUDED.revision, object = EXCLUDED.object"
)
_DELETE_MANY = f"DELETE FROM resources WHERE (kind, namespace, name) IN ({_KEYS})"
_LOG_MANY = (
    "INSERT INTO changes (revision, type, kind, namespace, name, object)"
    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"
)

RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0


def _filters(kind: str | None, namespace: str | None, first: int) -> tuple[str, list[Any]]:
    sql, params = "", []
    if kind is not None:
        params.append(kind)
        sql += f" AND kind = ${first + len(params) - 1}"
    if namespace is not None:
        params.append(namespace)
        sql += f" AND namespace = ${first + len(params) - 1}"
    return sql, params


def _columns(keys: Sequence[Key]) -> tuple[list[str], list[str], list[str]]:
    """Keys as three arrays, for `unnest`."""
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


class PostgresStore(StoreBase):
    """A store in a PostgreSQL database.  Create with `await PostgresStore.open(dsn)`."""

    def __init__(
        self, pool: Any, dsn: str, *, changes_retained: int, poll_interval: float
    ) -> None:
        super().__init__(changes_retained=changes_retained, poll_interval=poll_interval)
        self._pool = pool
        self._dsn = dsn
        self._listener: Any = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        changes_retained: int = DEFAULT_CHANGES_RETAINED,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_connections: int = 10,
    ) -> PostgresStore:
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=max_connections, statement_cache_size=0
        )
        try:
            await _migrate(pool)
            store = cls(pool, dsn, changes_retained=changes_retained, poll_interval=poll_interval)
            await store._listen()
        except BaseException:
            await pool.close()
            raise
        return store

    # -- reads and writes -----------------------------------------------------------------------

    async def _read(self, key: Key) -> Obj | None:
        text = await self._pool.fetchval(_SELECT, *key)
        return None if text is None else decode(text)

    async def _scan(self, kind: str | None, namespace: str | None, after: Key | None = None,
                    limit: int | None = None) -> tuple[list[Obj], int]:
        where, params = _filters(kind, namespace, 1)
        if after is not None:
            n = len(params)
            where += f" AND (kind, namespace, name) > (${n + 1}, ${n + 2}, ${n + 3})"
            params.extend(after)
        where += " ORDER BY kind, namespace, name"
        if limit is not None:
            params.append(limit)
            where += f" LIMIT ${len(params)}"
        async with self._pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            head = await conn.fetchval("SELECT revision FROM store_revision")
            rows = await conn.fetch(f"SELECT object FROM resources WHERE true{where}", *params)
        return [decode(r[0]) for r in rows], int(head)

    async def _write(self, key: Key, mutation: Mutation) -> Change:
        async with self._pool.acquire() as conn, conn.transaction():
            bumped = await conn.fetchrow(_BUMP, self._retained)
            revision, compacted = int(bumped[0]), int(bumped[1])
            text = await conn.fetchval(_SELECT, *key)
            change = mutation(None if text is None else decode(text), revision)
            stored = encode(change.object)
            await conn.execute(
                _DELETE if change.type == "DELETED" else _UPSERT,
                *key, revision, stored, change.type, compacted, CHANNEL, str(revision),
            )
        return change

    async def _write_batch(self, writes: Sequence[tuple[Key, Mutation]]) -> list[Change]:
        n = len(writes)
        keys = [key for key, _ in writes]
        async with self._pool.acquire() as conn, conn.transaction():
            bumped = await conn.fetchrow(_BUMP_N, self._retained, n)
            first, compacted = int(bumped[0]) - n + 1, int(bumped[1])
            rows = await conn.fetch(_SELECT_MANY, *_columns(keys))
            stored = {(r[0], r[1], r[2]): r[3] for r in rows}
            changes: list[Change] = []
            for i, (key, mutation) in enumerate(writes):
                text = stored.get(key)
                changes.append(mutation(None if text is None else decode(text), first + i))
            texts = [encode(c.object) for c in changes]
            revisions = list(range(first, first + n))
            kept = [i for i, c in enumerate(changes) if c.type != "DELETED"]
            gone = [changes[i].key for i in range(n) if changes[i].type == "DELETED"]
            if kept:
                await conn.execute(_UPSERT_MANY, *_columns([changes[i].key for i in kept]),
                                   [revisions[i] for i in kept], [texts[i] for i in kept])
            if gone:
                await conn.execute(_DELETE_MANY, *_columns(gone))
            await conn.execute(_LOG_MANY, revisions, [c.type for c in changes],
                               *_columns([c.key for c in changes]), texts)
            await conn.execute("DELETE FROM changes WHERE revision <= $1", compacted)
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(first + n - 1))
        return changes

    async def head_revision(self) -> int:
        return int(await self._pool.fetchval("SELECT revision FROM store_revision"))

    async def changes_after(
        self, revision: int, kind: str | None, namespace: str | None, limit: int
    ) -> ChangeBatch:
        where, params = _filters(kind, namespace, 3)
        async with self._pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            head_row = await conn.fetchrow("SELECT revision, compacted FROM store_revision")
            head, compacted = int(head_row[0]), int(head_row[1])
            if revision < compacted:
                raise ExpiredError(
                    f"revision {revision} is compacted (changes after {compacted} are kept)"
                )
            rows = await conn.fetch(
                f"SELECT revision, type, object FROM changes WHERE revision > $1{where}"
                " ORDER BY revision LIMIT $2",
                revision, limit, *params,
            )
        events = [WatchEvent(r[1], decode(r[2]), int(r[0])) for r in rows]
        if len(events) == limit:
            return ChangeBatch(events, events[-1].revision, True)
        return ChangeBatch(events, max(revision, head), False)

    # -- the change feed ------------------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn, statement_cache_size=0)
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._notifier.notify()

    def _on_listener_lost(self, conn: Any) -> None:
        if self._closing or self._reconnect is not None:
            return
        self._reconnect = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = RECONNECT_MIN
        try:
            while not self._closing:
                try:
                    await self._listen()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    log.warning("store LISTEN connection lost, retrying in %.1fs: %s", delay, e)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                # Anything committed while we were deaf is in `changes`: make watchers look.
                self._notifier.notify()
                return
        finally:
            self._reconnect = None

    async def _close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._listener is not None:
            await self._listener.close()
        await self._pool.close()


async def _migrate(pool: Any) -> None:
    """Create the schema if missing; replicas starting together serialise on an advisory lock."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_SCHEMA)
        version = await conn.fetchval("SELECT schema_version FROM store_revision")
    if version != SCHEMA_VERSION:
        raise RuntimeError(f"store schema version {version}, expected {SCHEMA_VERSION}")
