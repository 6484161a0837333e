"""`open_store(url)`: the one place a store URL (`--store`) becomes a store.

    memory                         in-process, for tests
    sqlite:PATH                    relative or absolute path (also sqlite:///abs/path, sqlite::memory:)
    postgresql://user@host/db      also postgres://; passed to asyncpg as the DSN
"""

from __future__ import annotations

import logging

from tulle.controlplane.store.base import DEFAULT_CHANGES_RETAINED, DEFAULT_POLL_INTERVAL
from tulle.controlplane.store.protocol import ResourceStore

DRIVER_LOGGERS = ("aiosqlite", "asyncpg")
"""The loggers of the database drivers the stores use.  aiosqlite logs every statement with its
parameters at debug level, and one of those rows is the stored CA with its private key
(`--log-level debug` once wrote `-----BEGIN PRIVATE KEY-----` to the log); asyncpg's pool logs
at warning today, but is held the same way so that a release that adds query logging cannot
leak either."""

DRIVER_LOG_LEVEL = logging.WARNING


def quiet_drivers() -> None:
    """Hold the drivers' loggers at WARNING whatever the process's level: their warnings (a
    lost connection) stay, their statements and parameters never reach a log."""
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(DRIVER_LOG_LEVEL)


async def open_store(
    url: str,
    *,
    changes_retained: int = DEFAULT_CHANGES_RETAINED,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> ResourceStore:
    """Open (and for SQL backends, create or migrate) the store `url` names."""
    if url in {"memory", "memory:", "memory://"}:
        from tulle.controlplane.store.memory import MemoryStore

        return MemoryStore(changes_retained=changes_retained, poll_interval=poll_interval)
    if url.startswith("sqlite:"):
        path = sqlite_path(url)
        from tulle.controlplane.store.sqlite import SqliteStore

        return await SqliteStore.open(path, changes_retained=changes_retained, poll_interval=poll_interval)
    if url.startswith(("postgresql://", "postgres://")):
        from tulle.controlplane.store.postgres import PostgresStore

        return await PostgresStore.open(url, changes_retained=changes_retained, poll_interval=poll_interval)
    raise ValueError(
        f"unsupported store URL {url!r}: use memory, sqlite:PATH or postgresql://USER@HOST/DB"
    )


def sqlite_path(url: str) -> str:
    """The file path in a `sqlite:` URL: `sqlite:rel/x.db`, `sqlite:/abs/x.db`,
    `sqlite:///abs/x.db` (`sqlite://` + absolute path)."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ValueError(f"store URL {url!r}: after sqlite:// the path must be absolute")
    if not rest:
        raise ValueError(f"store URL {url!r} has no path")
    return rest
