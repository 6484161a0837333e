"""The reconciler's whole-mesh compilation, off the event loop: on one worker thread (ADR 0133).

Why: the compilation (`MeshInputs.from_resources` + `compile_mesh`) is pure CPU, 0.4 s at
2,000 Services and 1.0-1.4 s at 5,000, once per change.  On the event loop it held up every
proxy's stream (pings, ACKs, pushes), `/healthz` and the API for that long.  Apply's checks
already left the loop the same way (`api/apply_checks.py`, ADR 0128).

The rules:

- The reconciler captures the inputs on the loop (a new dict of its resources, at the point
  it read them before: after `_whole_transactions`, no await in between, ADR 0121) and hands
  them over.  The worker reads that copy and nothing the loop goes on changing (no resource
  object is changed in place: `preview.py`).
- The `PartCache` (the compiler's memo of the last compilation) is this object's and only
  its worker thread touches it.  One thread: two compilations never run at once, and one the
  reconciler stopped waiting for (a cancelled task, a re-list) finishes before the next
  starts.  Its output is never used; the memo it leaves is, which is correct because a hit
  returns exactly what a rebuild would.
- The collector policy (`heap.py`, ADR 0130) runs around each compilation on the worker, so
  it is entered and left by the same thread whether or not anyone still waits for the result.
- The results go back to the loop, which applies them (`Reconciler._compile`).
- `call` runs another pure function of a copy on the same thread: which virtual IPs the
  Services should hold (`vips.statuses`, ~20 ms at 5,000 Services), decided before each
  compilation.
- `close` drops a compilation not yet started and waits for one running, so that when the
  reconciler has stopped no thread of it runs and the collector is as the heap found it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from tulle.controlplane.compiler import CompileResult, MeshInputs, PartCache, compile_mesh
from tulle.controlplane.heap import FrozenHeap
from tulle.controlplane.store.protocol import Obj

THREAD_NAME = "tulle-compile"

A = TypeVar("A")
T = TypeVar("T")


class CompileWorker:
    """Whole-mesh compilations on one worker thread, each over a copy made on the loop."""

    def __init__(self, heap: FrozenHeap | None = None) -> None:
        """`heap`: the collector policy around each compilation (None: the collector as the
        process has it)."""
        self.heap = heap
        self._parts = PartCache()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._last: Future[Any] | None = None

    async def compile(self, resources: Collection[Obj]) -> CompileResult:
        """The mesh of `resources` compiled on the worker.  `resources` must not change
        afterwards (give it a copy).  Cancelling the caller leaves the compilation to
        finish on the worker; its result is dropped."""
        job = self._worker.submit(self._run, resources)
        self._last = job
        return await asyncio.wrap_future(job)

    async def call(self, fn: Callable[[A], T], arg: A) -> T:
        """`fn(arg)` on the worker, after what is queued there.  `fn` must be pure and `arg`
        a copy the loop does not change."""
        job = self._worker.submit(fn, arg)
        self._last = job
        return await asyncio.wrap_future(job)

    def _run(self, resources: Collection[Obj]) -> CompileResult:
        """On the worker thread: the only place the part cache is read or written."""
        with self.heap.compiling() if self.heap is not None else contextlib.nullcontext():
            return compile_mesh(MeshInputs.from_resources(resources), self._parts)

    async def close(self) -> None:
        """No more compilations: one not started is dropped, one running is waited for
        (at most one compilation's time)."""
        self._worker.shutdown(wait=False, cancel_futures=True)
        last = self._last
        if last is not None and not last.cancelled():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(last)


__all__ = ["THREAD_NAME", "CompileWorker"]
