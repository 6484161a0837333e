"""Apply's compilations, off the event loop: on one worker thread, one apply at a time.

Why (ADR 0128): before it writes, apply compiles its documents over the whole mesh for its
warnings (`warnings.py`, ADR 0024) and, while a proxy of an older build is connected, renders
some proxies' snapshots (`skew_warnings.py`, ADR 0125).  That ran on the event loop, which
also serves every proxy's stream (ACKs, pings, pushes), the reconciler and the API: on a real
control plane with 5,000 Services and an older proxy connected, one small apply held it 2.2 s,
and a `/healthz` and a stream client's ping waited as long (a push to another proxy, 3.0 s).

How:

- `capture` runs on the loop when an apply's turn comes and binds the checks to that moment:
  the reconciler's resources as a copy (`MeshView`, `preview.py`) and the connected older
  proxies read from their statuses (`older_proxies`).  The worker reads those and the apply's
  own documents, nothing the loop goes on changing.
- The turn: an `asyncio.Lock` held from the capture until the worker is done, so each apply's
  checks see the state of their own start, not of their arrival in a queue; and one worker
  thread, so two applies never compile at once (they would take the CPU, and the GIL, twice
  over).  An apply cancelled while its checks run leaves its turn; its compilation still
  finishes on the worker, and the next one waits there for it.
- A worker thread still needs the GIL to run Python; the loop gets it back within the
  interpreter's switch interval (5 ms) whenever it has something to do, so it answers in
  milliseconds, not seconds (the figures are in the ADR).
- The reconciler's compilations have a worker thread of their own (`compile_worker.py`, ADR
  0133), not this one: shared, a change arriving during a check would be compiled only after
  it (at 5,000 Services, its push came 2.7 s after it instead of 1.7 s).

What stays: the warnings are those of the same functions over the same state, taken at the
same step of apply (after the current objects were read, step 3).  The write is checked
against the versions read then, so a change to an applied object between that read and the
write (now also one made while the checks run) refuses the apply, 409, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from tulle.controlplane.api.skew_warnings import (
    SkewCheck,
    older_proxies,
    skew_check,
    stored_skew,
)
from tulle.controlplane.api.warnings import Preview
from tulle.controlplane.preview import MeshView, ResourceKey
from tulle.controlplane.push.cache import ProxyStatus

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Checks:
    """Apply's checks bound to one moment's state: safe to call on any thread."""

    preview: Preview | None = None
    """The conditions the documents would have (`MeshView.conditions`)."""
    skew: SkewCheck | None = None
    """What they put in use at older proxies (`skew_warnings.skew_check`)."""
    stored: StoredSkew | None = None
    """What a stored object puts in use at older proxies, and how many of them are connected
    (`describe`, ADR 0131)."""


StoredSkew = Callable[[ResourceKey], tuple[int, list[str]]]
"""(kind, namespace or "", name) -> (older proxies connected, `stored_skew`'s lines)."""

Capture = Callable[[], Checks]
"""Called on the event loop: the checks bound to the state of now."""


class ApplyChecks:
    """Runs apply's checks on one worker thread, one apply at a time, each over the state
    captured on the loop when its turn comes."""

    def __init__(self, capture: Capture) -> None:
        self._capture = capture
        self._turn = asyncio.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tulle-apply-check")

    async def run(self, work: Callable[[Checks], T]) -> T:
        """`work` over the checks bound to the state of now, on the worker thread."""
        async with self._turn:
            checks = self._capture()  # (on the loop, before the worker reads anything)
            return await asyncio.get_running_loop().run_in_executor(self._worker, work, checks)

    def close(self) -> None:
        """No more applies: a check not yet started is dropped (its apply ends with the
        server); one running finishes on its thread."""
        self._worker.shutdown(wait=False, cancel_futures=True)


def mesh_checks(view: Callable[[], MeshView],
                statuses: Callable[[], Iterable[ProxyStatus]]) -> Capture:
    """The control plane's capture: the reconciler's view (`Reconciler.view`) and the push
    server's proxy statuses, both read on the loop."""
    def capture() -> Checks:
        state = view()
        older = older_proxies(statuses())

        def stored(key: ResourceKey) -> tuple[int, list[str]]:
            if not older or key not in state.resources:
                return len(older), []
            gone = state.without(key)
            return len(older), stored_skew(older, lambda keys: state.snapshots([], keys),
                                           lambda keys: gone.snapshots([], keys))
        return Checks(preview=state.conditions, skew=skew_check(older, state.snapshots),
                      stored=stored)
    return capture


__all__ = ["ApplyChecks", "Capture", "Checks", "StoredSkew", "mesh_checks"]
