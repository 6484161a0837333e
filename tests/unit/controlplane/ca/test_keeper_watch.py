"""The CA keeper follows the stored CA record from the record's own version: a record older
than the change log's window (any long-lived mesh: every status write is a change) must not
make its watch fail for ever (ADR 0102)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tulle.controlplane.ca import persist
from tulle.controlplane.ca.keeper import CAKeeper
from tulle.controlplane.ca.persist import CA_KIND, CA_NAME
from tulle.controlplane.store.memory import MemoryStore


async def test_a_ca_record_older_than_the_change_log_is_followed_without_failing(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(changes_retained=5, poll_interval=0.05)
    ca = await persist.load_or_create(store, "cluster.local")
    for i in range(20):  # other writes push the record's version out of the log
        await store.create({"apiVersion": "v1", "kind": "Thing", "metadata": {"name": f"t{i}"}})
    keeper = CAKeeper(store)
    await keeper.load(ca)
    caplog.set_level(logging.WARNING, "tulle.controlplane.ca")
    keeper.start()
    try:
        await asyncio.sleep(0.3)
        # Another replica rewrites the record: this one adopts it from the watch.
        record = await store.get(CA_KIND, None, CA_NAME)
        record["metadata"]["labels"] = {"touched": "yes"}
        record["spec"] = dict(record["spec"])
        updated = await store.update(record)
        for _ in range(100):
            if keeper.revision == int(updated["metadata"]["resourceVersion"]):
                break
            await asyncio.sleep(0.02)
        assert keeper.revision == int(updated["metadata"]["resourceVersion"])
        assert "watch failed" not in caplog.text, caplog.text
    finally:
        await keeper.stop()
        await store.close()
