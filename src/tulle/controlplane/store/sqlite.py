"""The SQLite store: the embedded default, one file, WAL, one connection.

Layout (shared with the PostgreSQL store): `store_revision` holds the single revision counter
and the compaction mark; `resources` one row per object (JSON text); `changes` one row per
write, kept for the last `changes_retained` revisions, which is what watch replays.

Every operation runs on one aiosqlite connection behind one asyncio lock, so a write's
statements (`BEGIN IMMEDIATE`, bump, read, write, log, compact, `COMMIT`) never interleave with
another's and readers never see a write half done.  A batch is the same transaction with many
rows: a process killed before `COMMIT` leaves none of them (SQLite rolls the WAL back).
Watchers in this process are woken after each commit.

Two processes on one file are not a goal (use PostgreSQL for replicas) but are safe: `BEGIN
IMMEDIATE` takes SQLite's write lock, so the counter and the rows stay consistent, and a
writer that cannot get the lock within `busy_timeout` fails rather than corrupting anything.
The other process's watchers see such writes only at their next poll (`poll_interval`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from tulle.controlplane.store.base import DEFAULT_CHANGES_RETAINED, DEFAULT_POLL_INTERVAL, StoreBase
from tulle.controlplane.store.errors import ExpiredError
from tulle.controlplane.store.objects import Change, Key, Mutation, decode, encode
from tulle.controlplane.store.protocol import Obj, WatchEvent
from tulle.controlplane.store.watch import ChangeBatch

SCHEMA_VERSION = 1

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    compacted INTEGER NOT NULL,
    schema_version INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_revision (id, revision, compacted, schema_version) VALUES (1, 0, 0, 1);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    object TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    object TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_kind ON changes (kind, revision);
"""

BUSY_TIMEOUT_MS = 5000
"""How long a write waits for another process's write lock before failing."""


def _filters(kind: str | None, namespace: str | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if kind is not None:
        sql += " AND kind = ?"
        params.append(kind)
    if namespace is not None:
        sql += " AND namespace = ?"
        params.append(namespace)
    return sql, params


class SqliteStore(StoreBase):
    """A store in one SQLite file (or `:memory:`).  Create with `await SqliteStore.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, *, changes_retained: int, poll_interval: float) -> None:
        super().__init__(changes_retained=changes_retained, poll_interval=poll_interval)
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        changes_retained: int = DEFAULT_CHANGES_RETAINED,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> SqliteStore:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await db.executescript(_SCHEMA)
            rows = await db.execute_fetchall("SELECT schema_version FROM store_revision")
            version = int(next(iter(rows))[0])
            if version != SCHEMA_VERSION:
                raise RuntimeError(f"{path}: store schema version {version}, expected {SCHEMA_VERSION}")
        except BaseException:
            await db.close()
            raise
        return cls(db, changes_retained=changes_retained, poll_interval=poll_interval)

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))

    async def _serial(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run `body` under the lock, to its end, whatever happens to the caller.

        aiosqlite queues each statement for its thread, and cancelling an await does not take
        the statement back: a caller cancelled mid-call (an API client that disconnects during
        a list: Starlette cancels its handler) released the lock while its `BEGIN` was still
        queued, the next caller's `BEGIN` ran after it and failed with "cannot start a
        transaction within a transaction", and so did every call after that: the whole API,
        for good.  So the body is a task of its own that keeps the lock until its last
        statement has run (a cancelled caller gets CancelledError at once, a cancelled write
        may still be stored, as with a connection lost after `COMMIT`); `_begin` rolls back a
        transaction a crashed body left anyway."""
        async def locked() -> T:
            async with self._lock:
                return await body()

        task = asyncio.ensure_future(locked())
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _read(self, key: Key) -> Obj | None:
        async def body() -> list[Any]:
            return await self._rows(
                "SELECT object FROM resources WHERE kind = ? AND namespace = ? AND name = ?", key
            )

        rows = await self._serial(body)
        return decode(rows[0][0]) if rows else None

    async def _scan(self, kind: str | None, namespace: str | None, after: Key | None = None,
                    limit: int | None = None) -> tuple[list[Obj], int]:
        where, params = _filters(kind, namespace)
        if after is not None:
            where += " AND (kind, namespace, name) > (?, ?, ?)"
            params.extend(after)
        where += " ORDER BY kind, namespace, name"
        if limit is not None:
            where += " LIMIT ?"
            params.append(limit)

        async def body() -> tuple[list[Any], list[Any]]:
            async with self._read_transaction():
                head = await self._rows("SELECT revision FROM store_revision")
                rows = await self._rows(f"SELECT object FROM resources WHERE 1 = 1{where}",
                                        params)
            return head, rows

        head, rows = await self._serial(body)
        return [decode(r[0]) for r in rows], int(head[0][0])

    async def _write_batch(self, writes: Sequence[tuple[Key, Mutation]]) -> list[Change]:
        return await self._serial(lambda: self._write_locked(writes))

    async def _write_locked(self, writes: Sequence[tuple[Key, Mutation]]) -> list[Change]:
        n = len(writes)
        await _begin(self._db, "BEGIN IMMEDIATE")
        try:
            bumped = await self._rows(
                "UPDATE store_revision SET revision = revision + ?,"
                " compacted = max(compacted, revision + ? - ?) RETURNING revision, compacted",
                (n, n, self._retained),
            )
            first, compacted = int(bumped[0][0]) - n + 1, int(bumped[0][1])
            changes: list[Change] = []
            for i, (key, mutation) in enumerate(writes):
                rows = await self._rows(
                    "SELECT object FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                    key,
                )
                changes.append(mutation(decode(rows[0][0]) if rows else None, first + i))
            logged = [(first + i, c.type, *c.key, encode(c.object)) for i, c in enumerate(changes)]
            await self._db.executemany(
                "DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                [row[2:5] for row in logged if row[1] == "DELETED"],
            )
            await self._db.executemany(
                "INSERT OR REPLACE INTO resources (kind, namespace, name, revision, object)"
                " VALUES (?, ?, ?, ?, ?)",
                [(*row[2:5], row[0], row[5]) for row in logged if row[1] != "DELETED"],
            )
            await self._db.executemany(
                "INSERT INTO changes (revision, type, kind, namespace, name, object)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                logged,
            )
            await self._db.execute("DELETE FROM changes WHERE revision <= ?", (compacted,))
            await self._db.execute("COMMIT")
            self._notifier.notify()  # here too: a cancelled caller never reaches the base's
        except BaseException:
            if self._db.in_transaction:  # (a cancelled COMMIT may have committed)
                await self._db.execute("ROLLBACK")
            raise
        return changes

    async def head_revision(self) -> int:
        rows = await self._serial(lambda: self._rows("SELECT revision FROM store_revision"))
        return int(rows[0][0])

    async def changes_after(
        self, revision: int, kind: str | None, namespace: str | None, limit: int
    ) -> ChangeBatch:
        where, params = _filters(kind, namespace)

        async def body() -> tuple[list[Any], int]:
            async with self._read_transaction():
                head_rows = await self._rows("SELECT revision, compacted FROM store_revision")
                head, compacted = int(head_rows[0][0]), int(head_rows[0][1])
                if revision < compacted:
                    raise ExpiredError(
                        f"revision {revision} is compacted (changes after {compacted} are kept)"
                    )
                rows = await self._rows(
                    f"SELECT revision, type, object FROM changes WHERE revision > ?{where}"
                    " ORDER BY revision LIMIT ?",
                    (revision, *params, limit),
                )
            return rows, head

        rows, head = await self._serial(body)
        return _batch(rows, revision, head, limit)

    def _read_transaction(self) -> _ReadTransaction:
        return _ReadTransaction(self._db)

    async def _close(self) -> None:
        async with self._lock:
            await self._db.close()


def _batch(rows: Iterable[Any], after: int, head: int, limit: int) -> ChangeBatch:
    events = [WatchEvent(r[1], decode(r[2]), int(r[0])) for r in rows]
    if len(events) == limit:
        return ChangeBatch(events, events[-1].revision, True)
    return ChangeBatch(events, max(after, head), False)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a finished body's exception, so that one whose caller was cancelled is not
    reported as never retrieved (its caller already got CancelledError)."""
    if not task.cancelled():
        task.exception()


async def _begin(db: aiosqlite.Connection, statement: str) -> None:
    """Open a transaction, first rolling back one a cancelled call left open.

    aiosqlite runs each statement in its own thread, so a caller cancelled while awaiting
    `BEGIN` (or before its `COMMIT` was sent) leaves the connection inside that transaction,
    and every later `BEGIN` failed with "cannot start a transaction within a transaction":
    one API client that disconnected during a list took the whole API down.  Every call holds
    the store's lock from its `BEGIN` to its end, so a transaction open when the lock is taken
    belongs to no running call: a read's snapshot, or a write that never committed, and
    rolling it back loses nothing any caller was told is stored."""
    if db.in_transaction:
        await db.execute("ROLLBACK")
    await db.execute(statement)


class _ReadTransaction:
    """`BEGIN` ... `COMMIT` around a multi-statement read: one snapshot, also across processes."""

    __slots__ = ("_db",)

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def __aenter__(self) -> None:
        await _begin(self._db, "BEGIN")

    async def __aexit__(self, *exc: object) -> None:
        if self._db.in_transaction:
            await self._db.execute("COMMIT")
