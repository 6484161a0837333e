"""The reconciler's compilation on its worker thread (ADR 0133), with real changes through a
memory store: a gate holds a compilation on the worker while the loop goes on.

- The `PartCache` is touched by the worker thread only, and the first compilation runs there
  too (the loop answers; not ready until it is done).
- Changes taken while a compilation runs lead to exactly one more compilation after it:
  never two at once, none lost (the cache ends as a fresh compilation of the store).
- Stopping during a compilation waits for it, applies nothing of it, and leaves no worker
  thread and the collector on.
- Conditions compiled from a route are not written onto a newer version of it taken while
  the compilation ran.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from tests.support.resources import NS, scale_mesh, scale_route

from tulle.controlplane import compile_worker
from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.compiler import CompileResult, MeshInputs, PartCache, compile_mesh
from tulle.controlplane.heap import FrozenHeap
from tulle.controlplane.push.cache import SnapshotCache
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.protocol import Obj


class Gate:
    """Wraps `compile_mesh`: counts calls and how many run at once; when armed, holds the next
    call on its thread until released."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0

    def arm(self) -> None:
        self.entered.clear()
        self.release.clear()
        self.armed = True

    def wrap(self, real: Callable[..., CompileResult]) -> Callable[..., CompileResult]:
        def compile(*args: Any) -> CompileResult:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.calls += 1
            try:
                if self.armed:
                    self.armed = False
                    self.entered.set()
                    assert self.release.wait(10)
                return real(*args)
            finally:
                with self.lock:
                    self.running -= 1
        return compile


class WatchedParts(PartCache):
    """A part cache that notes the thread of every attribute read."""

    threads: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        WatchedParts.threads.add(threading.current_thread().name)
        return super().__getattribute__(name)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    g = Gate()
    monkeypatch.setattr(compile_worker, "compile_mesh", g.wrap(compile_mesh))
    monkeypatch.setattr(compile_worker, "PartCache", WatchedParts)
    WatchedParts.threads = set()
    return g


@pytest.fixture
def unfrozen() -> Iterator[None]:
    enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


async def entered(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.entered.wait, 10), "no compilation reached the gate"


async def settled(rec: Reconciler, cond: Callable[[], bool] = lambda: True) -> None:
    async with asyncio.timeout(10):
        while not cond() or not rec.settled or not rec.ready.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # (a debounce)
        while not rec.settled:
            await asyncio.sleep(0.01)


async def write(store: MemoryStore, *docs: Obj) -> None:
    response = await apply_documents(store, list(docs), [], False)
    assert response.status_code == 200, bytes(response.body)


@pytest.fixture
async def rec(gate: Gate) -> AsyncIterator[Reconciler]:
    store = MemoryStore()
    r = Reconciler(store, SnapshotCache(), debounce=0.01)
    r.start()
    await r.ready.wait()
    await write(store, *scale_mesh(6))
    await settled(r, lambda: len(r.cache.proxies()) == 6)
    try:
        yield r
    finally:
        await r.stop()


async def test_the_first_compilation_runs_on_the_worker_and_ready_follows_it(
        gate: Gate) -> None:
    store = MemoryStore()
    await write(store, *scale_mesh(3))
    rec = Reconciler(store, SnapshotCache(), debounce=0.01)
    gate.arm()
    rec.start()
    try:
        await entered(gate)
        for _ in range(5):  # the loop goes on while the worker compiles
            await asyncio.sleep(0.01)
        assert not rec.ready.is_set() and rec.compiles == 0 and not rec.settled
        gate.release.set()
        await asyncio.wait_for(rec.ready.wait(), 10)
        assert rec.compiles == 1 and len(rec.cache.proxies()) == 3
    finally:
        await rec.stop()
    assert WatchedParts.threads and all(
        t.startswith(compile_worker.THREAD_NAME) for t in WatchedParts.threads), \
        WatchedParts.threads


async def test_changes_during_a_compilation_make_exactly_one_more(
        rec: Reconciler, gate: Gate) -> None:
    store = rec.store
    assert isinstance(store, MemoryStore)
    done, calls = rec.compiles, gate.calls
    gate.arm()
    await write(store, scale_route(1, 2))
    await entered(gate)
    # Meanwhile the loop takes two more changes from the watch (and answers: this test runs
    # on it), and runs no compilation of them.
    await write(store, scale_route(2, 3))
    await store.delete("Workload", NS, "w-5")
    async with asyncio.timeout(5):
        while ("Workload", NS, "w-5") in rec._resources:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # (well past the debounce)
    assert gate.calls == calls + 1 and rec.compiles == done and not rec.settled
    gate.release.set()
    await settled(rec)
    assert rec.compiles == done + 2, (rec.compiles, done)
    assert gate.calls == calls + 2 and gate.most == 1
    # Nothing lost: the cache is what a fresh compilation of the store gives.
    items, _ = await store.list()
    fresh = compile_mesh(MeshInputs.from_resources(items), PartCache())
    assert sorted(fresh.snapshots) == sorted(rec.cache.proxies())
    assert all(rec.cache.get(k).version == cfg.version  # type: ignore[union-attr]
               for k, cfg in fresh.snapshots.items())
    assert all(t.startswith(compile_worker.THREAD_NAME) for t in WatchedParts.threads), \
        WatchedParts.threads


async def test_stopping_during_a_compilation_waits_for_it_and_applies_nothing(
        gate: Gate, unfrozen: None) -> None:
    store = MemoryStore()
    rec = Reconciler(store, SnapshotCache(), debounce=0.01, heap=FrozenHeap())
    rec.start()
    await rec.ready.wait()
    await write(store, *scale_mesh(3))
    await settled(rec, lambda: len(rec.cache.proxies()) == 3)
    before = {k: rec.cache.get(k) for k in rec.cache.proxies()}
    done = rec.compiles
    gate.arm()
    await write(store, scale_route(0, 2))
    await entered(gate)
    assert not gc.isenabled()  # (the heap's policy, on the worker)
    stopping = asyncio.ensure_future(rec.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # it waits for the compilation on the worker
    gate.release.set()
    await asyncio.wait_for(stopping, 10)
    assert gc.isenabled()
    assert rec.compiles == done
    assert {k: rec.cache.get(k) for k in rec.cache.proxies()} == before
    async with asyncio.timeout(2):
        while any(t.name.startswith(compile_worker.THREAD_NAME)
                  for t in threading.enumerate()):
            await asyncio.sleep(0.01)


def resolved(obj: Obj) -> list[bool]:
    return [c.get("status") == "True"
            for p in (obj.get("status") or {}).get("parents") or []
            for c in p.get("conditions") or [] if c.get("type") == "ResolvedRefs"]


async def test_conditions_are_not_written_onto_a_version_taken_during_the_compilation(
        rec: Reconciler, gate: Gate) -> None:
    """r-1 is pointed at a missing Service and, while that compiles, back at a real one:
    the compilation's `ResolvedRefs: False` is for the first version, and must not land on
    the second (whose own compilation follows)."""
    store = rec.store
    assert isinstance(store, MemoryStore)
    seen: list[Obj] = []
    _, revision = await store.list()

    async def watch() -> None:
        async for ev in store.watch(since_revision=revision):
            if ev.object.get("kind") == "HTTPRoute" and \
                    ev.object["metadata"]["name"] == "r-1":
                seen.append(ev.object)

    watcher = asyncio.ensure_future(watch())
    try:
        gate.arm()
        broken = scale_route(1, 1)
        broken["spec"]["rules"][0]["backendRefs"][0]["name"] = "missing"
        await write(store, broken)
        await entered(gate)
        await write(store, scale_route(1, 2))
        async with asyncio.timeout(5):
            while (rec._resources[("HTTPRoute", NS, "r-1")]["spec"]["rules"][0]
                   ["backendRefs"][0]["name"]) != "svc-2":
                await asyncio.sleep(0.01)
        gate.release.set()
        await settled(rec)
        await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
    fixed = [o for o in seen
             if o["spec"]["rules"][0]["backendRefs"][0]["name"] == "svc-2"]
    assert fixed and resolved(fixed[-1]) == [True], fixed[-1]
    assert all(False not in resolved(o) for o in fixed), [o.get("status") for o in fixed]
