"""`Reconciler.view` (ADR 0128): what apply's checks compile on their worker thread is the
reconciler's state when the view was taken, whatever the loop does to the reconciler while the
worker compiles; and compiling reads the objects without changing them (the view's copy is
shallow, which only that makes safe)."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from tests.integration.controlplane.test_version_skew import sticky_route
from tests.support.resources import NS, route, service, workload

from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.preview import MeshView
from tulle.controlplane.push.cache import SnapshotCache
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.protocol import Obj

KEYS = [(NS, "web-0"), (NS, "api-0")]


@pytest.fixture
async def rec() -> AsyncIterator[Reconciler]:
    store = MemoryStore()
    r = Reconciler(store, SnapshotCache(), debounce=0.01)
    r.start()
    await r.ready.wait()
    docs = [workload("web-0", 18001, 18002, 18003, app="web"),
            workload("api-0", 18004, 18005, 18006, app="api"),
            *(service(f"api{i}", app="api") for i in range(5)),
            route("plain", ("/", "api1"), parent="api0")]
    response = await apply_documents(store, docs, [], False)
    assert response.status_code == 200
    await until(r, lambda: len(r._resources) == len(docs))
    try:
        yield r
    finally:
        await r.stop()


async def until(r: Reconciler, cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond() or not r.settled:
            await asyncio.sleep(0.01)


def rendered(view: MeshView, objs: list[Obj]) -> tuple[Any, bytes]:
    """What a check reads of a view: conditions, and snapshots as bytes."""
    snaps = view.snapshots(objs, KEYS)
    return view.conditions(objs), msgspec.json.encode([snaps[k] for k in sorted(snaps)])


async def churn(r: Reconciler, rounds: int) -> None:
    """Real changes through the store, each taken by the reconciler (watch, compilation)."""
    store = r.store
    for i in range(rounds):
        docs = [service(f"new{i}", app="api"), route("plain", (f"/{i}", f"api{i % 5}"),
                                                     parent="api0")]
        response = await apply_documents(store, docs, [], False)
        assert response.status_code == 200
        await store.delete("Service", NS, f"api{(i % 4) + 1}")
        await apply_documents(store, [service(f"api{(i % 4) + 1}", app="api")], [], False)
        await until(r, lambda i=i: ("Service", NS, f"new{i}") in r._resources)


async def test_a_view_compiled_on_a_thread_is_the_state_it_was_taken_at(
        rec: Reconciler) -> None:
    view = rec.view()
    objs = [sticky_route("cart", "/cart")]
    objs[0]["spec"]["parentRefs"][0]["name"] = "api0"
    expected = rendered(view, objs)
    started, go = threading.Event(), threading.Event()

    def worker() -> tuple[Any, bytes]:
        started.set()
        assert go.wait(10)
        return rendered(view, objs)

    job = asyncio.ensure_future(asyncio.to_thread(worker))
    assert await asyncio.to_thread(started.wait, 10)
    before = dict(rec._resources)
    await churn(rec, 3)  # the loop changes the reconciler while the worker holds the view
    assert rec._resources != before
    go.set()
    assert await job == expected
    assert rendered(rec.view(), objs) != expected  # (the changes were ones that show)


async def test_a_view_compiled_while_the_loop_keeps_changing_the_reconciler(
        rec: Reconciler) -> None:
    """No handshake: the worker compiles again and again while changes keep coming."""
    view = rec.view()
    objs = [route("other", ("/x", "api2"), parent="api1")]
    expected = rendered(view, objs)
    stop = threading.Event()

    def worker() -> list[tuple[Any, bytes]]:
        out: list[tuple[Any, bytes]] = []
        while not stop.is_set() or not out:
            out.append(rendered(view, objs))
        return out

    job = asyncio.ensure_future(asyncio.to_thread(worker))
    await churn(rec, 10)
    stop.set()
    results = await job
    assert results and all(r == expected for r in results)


async def test_compiling_a_view_leaves_the_objects_as_they_were(rec: Reconciler) -> None:
    """The view shares the reconciler's objects: a compilation must not change them."""
    before = copy.deepcopy(rec._resources)
    objs = [sticky_route("cart", "/cart"), service("api9", app="api")]
    objs[0]["spec"]["parentRefs"][0]["name"] = "api0"
    kept = copy.deepcopy(objs)
    rendered(rec.view(), objs)
    assert rec._resources == before
    assert objs == kept
