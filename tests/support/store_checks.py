"""Checks every store backend must pass, shared by the SQLite and PostgreSQL test modules."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tulle.controlplane.store import ResourceStore


def _service(name: str) -> dict[str, Any]:
    return {"apiVersion": "tulle.io/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"ports": [{"port": 80}]}}


async def cancel_at_every_turn(store: ResourceStore, op: str, turns: int = 60) -> None:
    """Cancel a `list` or `create` after 0..`turns` loop turns; after each, the store must
    still list and create (a cancelled create may or may not have stored its object)."""
    await store.create(_service("seed"))
    for n in range(turns):
        call = store.list() if op == "list" else store.create(_service(f"c{n}"))
        task: asyncio.Future[Any] = asyncio.ensure_future(call)
        for _ in range(n):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        items, _ = await store.list()
        assert "seed" in {i["metadata"]["name"] for i in items}
        created = await store.create(_service(f"after-{n}"))
        assert created["metadata"]["name"] == f"after-{n}"
