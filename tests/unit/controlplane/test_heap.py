"""`FrozenHeap` (ADR 0130): what one compilation leaves is frozen out of the collector's scans,
the collector is off while it runs, garbage cycles made before it are freed rather than
frozen, replaced state is still freed by reference counting, and a cycle that dies while
frozen stays only until a sweep, which comes when the heap grows past its bound (counted in the
interpreter's memory blocks since ADR 0133: the frozen count is a walk of every frozen object).

These freeze this test process's heap; each test unfreezes it again."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.resources import NS, scale_mesh, scale_route

from tulle.controlplane import compile_worker
from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.compiler import CompileResult, compile_mesh
from tulle.controlplane.heap import FrozenHeap
from tulle.controlplane.push.cache import SnapshotCache
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.memory import MemoryStore


class Node:
    """A container the collector tracks, that can hold itself in a cycle and be weakly
    referenced."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if enabled:
            gc.enable()
        gc.collect()


def frozen(obj: object) -> bool:
    """Whether `obj` is tracked but in no generation a collection scans (the permanent one)."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_what_a_compilation_leaves_is_frozen_and_the_collector_is_off_meanwhile() -> None:
    heap = FrozenHeap()
    before = Node()
    with heap.compiling():
        assert not gc.isenabled()
        made = [Node() for _ in range(100)]
    assert gc.isenabled()
    assert frozen(made[0]) and frozen(made) and frozen(before)
    assert heap.base > len(made)
    after = Node()
    assert not frozen(after)


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with FrozenHeap().compiling():
        pass
    assert not gc.isenabled()


def test_cycles_dropped_before_a_compilation_are_freed_not_frozen() -> None:
    a = Node()
    a.other = a
    gone = weakref.ref(a)
    del a
    with FrozenHeap().compiling():
        pass
    assert gone() is None


def test_replaced_state_is_freed_and_a_steady_heap_never_sweeps() -> None:
    """The frozen count stays where it was over compilations that replace their output with
    one of the same shape: the replaced objects are freed by reference counting although
    frozen, and nothing calls for a sweep."""
    heap = FrozenHeap()
    state: dict[str, object] = {}
    firsts = []
    counts = []
    for _ in range(20):
        with heap.compiling():
            state["snapshot"] = [Node() for _ in range(2_000)]
        firsts.append(weakref.ref(state["snapshot"][0]))  # type: ignore[index]
        counts.append(gc.get_freeze_count())
    assert all(r() is None for r in firsts[:-1])
    assert max(counts) - min(counts[1:]) < 200, counts
    assert heap.sweeps == 0


def test_a_cycle_that_dies_frozen_stays_until_the_sweep_its_growth_calls_for() -> None:
    """The trap of `gc.freeze()`: a frozen cycle that loses its last outside reference is
    garbage no collection scans.  It is freed by the sweep, which runs at the start of the
    compilation after the heap passed `sweep_growth` times its size after the last sweep."""
    heap = FrozenHeap(sweep_growth=1.5)
    holder: dict[str, object] = {}
    with heap.compiling():
        cyc = Node()
        cyc.other = cyc
        holder["cycle"] = cyc
    gone = weakref.ref(cyc)
    del cyc
    base = heap.base
    with heap.compiling():
        holder.clear()  # the cycle dies frozen
    gc.collect()
    assert gone() is not None  # left behind: no collection reaches it
    grow: list[object] = []
    for _ in range(4):  # each compilation adds a quarter of the base
        with heap.compiling():
            grow.append([Node() for _ in range(base // 4)])
        if heap.sweeps:
            break
    assert heap.sweeps == 1
    assert gone() is None
    assert 0 < heap.base <= sys.getallocatedblocks()  # (the size after the sweep)


def test_sweep_growth_must_allow_growth() -> None:
    with pytest.raises(ValueError, match="sweep_growth must be more than 1"):
        FrozenHeap(sweep_growth=1.0)


async def test_a_reconciler_compiles_with_no_collection_and_keeps_its_state_frozen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real compilations (memory store, 150 Services with a workload and a route each, then
    route edits): with the thresholds so low that the collector would otherwise run many
    times inside each compilation over what it builds, no collection runs during one, and
    the frozen count stays flat from one change to the next (each replaced snapshot freed)."""
    ran: list[int] = []
    compiling = [False]

    def hook(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and compiling[0]:
            ran.append(info["generation"])

    def watched(*args: Any) -> CompileResult:
        compiling[0] = True
        try:
            return compile_mesh(*args)
        finally:
            compiling[0] = False

    monkeypatch.setattr(compile_worker, "compile_mesh", watched)
    store = MemoryStore()
    heap = FrozenHeap()
    rec = Reconciler(store, SnapshotCache(), debounce=0.01, heap=heap)
    rec.start()
    gc.callbacks.append(hook)
    try:
        await rec.ready.wait()
        assert (await apply_documents(store, scale_mesh(150), [], False)).status_code == 200
        gc.set_threshold(500, 2, 2)
        counts = []
        for k in range(6):
            done = rec.compiles
            doc = scale_route(k, (k + 1) % 150)
            assert (await apply_documents(store, [doc], [], False)).status_code == 200
            async with asyncio.timeout(5):
                while rec.compiles <= done or not rec.settled:
                    await asyncio.sleep(0.01)
            counts.append(gc.get_freeze_count())
        assert len(rec.cache.proxies()) == 150
        assert rec.cache.get((NS, "w-0")) is not None
    finally:
        gc.callbacks.remove(hook)
        await rec.stop()
    assert ran == [], f"collections during compilations, by generation: {ran}"
    steady = counts[1:]  # (the first change's compilation still takes in the applied mesh)
    assert max(steady) - min(steady) < 100, counts
