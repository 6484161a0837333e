"""`open_store(url)`: which URL opens which backend, and where a sqlite: URL puts the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tulle.controlplane.store import open_store
from tulle.controlplane.store.factory import sqlite_path
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.sqlite import SqliteStore


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:store.db", "store.db"),
    ("sqlite:data/store.db", "data/store.db"),
    ("sqlite:/var/lib/tulle/store.db", "/var/lib/tulle/store.db"),
    ("sqlite:///var/lib/tulle/store.db", "/var/lib/tulle/store.db"),
    ("sqlite::memory:", ":memory:"),
])
def test_sqlite_paths(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite:", "sqlite://relative.db", "mysql://x", "", "redis://h"])
async def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"store URL"):
        await open_store(url)


async def test_memory_and_sqlite_urls_open_their_backend(tmp_path: Path) -> None:
    memory = await open_store("memory")
    assert isinstance(memory, MemoryStore)
    await memory.close()
    sqlite = await open_store(f"sqlite:///{tmp_path}/a/b.db")
    assert isinstance(sqlite, SqliteStore)
    await sqlite.close()
    assert (tmp_path / "a" / "b.db").exists()


async def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="changes_retained"):
        await open_store("memory", changes_retained=0)
