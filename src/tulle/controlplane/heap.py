"""The control plane's compiled state, kept out of the garbage collector's scans (ADR 0130).

Why: the process holds every proxy's snapshot and the compiler's part cache, hundreds of
thousands of container objects that live from one compilation to the next and are never in a
reference cycle (reference counting frees the old ones when a compilation replaces them).  The
cyclic collector cannot know that: each compilation's output went through a young collection
in the middle of the compilation, then through every middle and full collection after it,
and every one of them found nothing to free (ADR 0128 logged full and middle collections of
312-646 ms on the event loop at 5,000 Services, all `collected=0`).

What `FrozenHeap.compiling` does around one compilation (on the thread that compiles: the
reconciler's worker since ADR 0133, while the event loop goes on in its own thread):
1. a collection of what is not frozen: what the process made since the last compilation
   (requests, sessions).  Garbage cycles among it are freed here rather than frozen below;
2. the automatic collector is off while the compilation runs (it is pure: what it drops,
   reference counting frees; what it keeps is the new state).  The switch is process-wide,
   so the loop's own allocations meanwhile are not collected either: reference counting
   still frees them, and a garbage cycle the loop makes then is frozen below with the rest;
3. `gc.freeze()` after it: every object alive then moves to the permanent generation, which
   no collection scans.  Frozen objects that later lose their last reference are still freed
   at once by reference counting; only a frozen object that dies *in a cycle* stays;
4. so that nothing can pile up there unbounded, a **sweep**: when the interpreter's heap has
   grown past `sweep_growth` times its size after the last sweep, everything is unfrozen, one
   full collection runs, and what is left is frozen again.  A steady mesh never sweeps; a
   growing one sweeps once per doubling (by default), like the collector's own rule for full
   collections (25% growth) but rarer.  The size is taken when the next compilation starts,
   in place of its pre-collect: by then the loop has swapped the new snapshots in and freed
   the replaced ones, so it measures what lives, not the two generations of snapshots alive
   at the moment of the freeze.

The size is `sys.getallocatedblocks()` (the interpreter's memory blocks in use, summed from a
count kept per pool: with the collection, the whole step before a compilation takes 2-3 ms at
5,000 Services), not the frozen count that ADR 0130 read: `gc.get_freeze_count()` walks the
frozen list object by object, 42-49 ms at 600,000 objects, once per compilation, with the GIL
held (ADR 0133).  Garbage left in the frozen set holds its blocks, so it counts towards the
growth all the same.

A collection holds the GIL whichever thread runs it, so the pre-collect and a sweep still
pause the loop as they did when they ran on it (ADR 0130's figures).

Only `tulle control-plane run` uses it (`main.py`); an in-process control plane (tests, the
demo) leaves the collector as the host process has it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("tulle.controlplane")

SWEEP_GROWTH = 2.0
"""A sweep when the heap has grown to this many times its size after the last sweep.  So what
is held frozen stays within about this factor of what lives."""


class FrozenHeap:
    """The collector policy of a process whose long-lived state is made by compilations."""

    def __init__(self, sweep_growth: float = SWEEP_GROWTH) -> None:
        if not sweep_growth > 1.0:
            raise ValueError(f"sweep_growth must be more than 1, got {sweep_growth!r}")
        self.sweep_growth = sweep_growth
        self.base = 0
        """The heap's size (`sys.getallocatedblocks()`) after the last sweep (or the first
        compilation); 0 before it."""
        self.sweeps = 0
        self.last_sweep_ms = 0.0
        self.last_precollect_ms = 0.0

    @contextlib.contextmanager
    def compiling(self) -> Iterator[None]:
        """Around one compilation: see the module's text."""
        started = time.perf_counter()
        if self.base and sys.getallocatedblocks() > self.sweep_growth * self.base:
            self.sweep()  # (its full collection is this compilation's pre-collect too)
        else:
            gc.collect()
        self.last_precollect_ms = (time.perf_counter() - started) * 1000
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            if not self.base:
                self.base = sys.getallocatedblocks()
            if enabled:
                gc.enable()

    def sweep(self) -> None:
        """Unfreeze, collect everything, freeze again: a full collection's pause, once."""
        before = gc.get_freeze_count()
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.last_sweep_ms = (time.perf_counter() - started) * 1000
        self.base = sys.getallocatedblocks()
        self.sweeps += 1
        log.info("frozen heap swept: %d objects frozen, %d after; %d freed in %.0f ms",
                 before, gc.get_freeze_count(), freed, self.last_sweep_ms)
