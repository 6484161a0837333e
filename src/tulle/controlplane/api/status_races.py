"""An apply is not refused because the control plane wrote a status meanwhile (ADR 0133).

Why: apply writes each object over the version it read (step 3 of `apply.py`), and a version
is bumped by any write, a status write too.  The reconciler writes statuses after each
compilation (a route's conditions, a Service's virtual IP, a proxy's presence on its
Workload), and since its compilation runs on a worker thread those writes land while other
requests are served: applying an object twice in a row got a 409 in 6 of 12 runs, none
before.  The store keeps the stored status on an update (`store/objects.py:updating`), so
writing the user's document over the newer version loses nothing.

The rule: when the batch is refused for a conflict, the objects are read again; if the one
refused moved on in its status only, every object of the apply that moved on in its status
only is taken at its new version, and the batch is written again (at most `STATUS_RACES`
times).  A change to anything else still refuses the apply, 409 naming the document, and so
does any change to a document that named its own `metadata.resourceVersion` (the user asked
for exactly that version).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from tulle.api.registry import KindInfo
from tulle.controlplane.store.errors import BatchError, ConflictError
from tulle.controlplane.store.protocol import Obj

STATUS_RACES = 3
"""Times a batch is written again after objects moved on in their status only."""

Planned = tuple[int, KindInfo, Obj, Obj | None]
"""(document index, kind, the object to write, the version read; None for a create)."""

Read = Callable[[list[tuple[KindInfo, Obj]]], Awaitable[dict[tuple[str, str | None, str], Obj]]]
"""Reads the stored objects of these documents (`apply._current`)."""


def same_but_status(a: Obj, b: Obj) -> bool:
    """Two versions of one object that differ in `status` and `resourceVersion` only."""
    def strip(obj: Obj) -> Obj:
        md = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": md}
    return strip(a) == strip(b)


async def moved_on_in_status(exc: BatchError, planned: list[Planned], pinned: Collection[int],
                             read: Read, key: Callable[[KindInfo, Obj], tuple[str, str | None,
                                                                            str]]) -> bool:
    """After the store refused the batch: whether the object refused moved on in its status
    only.  If so, each object of `planned` that did is set to its new version (in place, in
    the object written and in `planned`), and the batch may be written again."""
    if not isinstance(exc.error, ConflictError):
        return False
    updates = [(n, p) for n, p in enumerate(planned) if p[3] is not None and p[0] not in pinned]
    if not any(n == exc.index for n, _ in updates):
        return False
    now = await read([(info, obj) for _, (_, info, obj, _) in updates])
    moved = False
    for n, (i, info, obj, seen) in updates:
        current = now.get(key(info, obj))
        if current is None or seen is None or not same_but_status(seen, current):
            continue
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        planned[n] = (i, info, obj, current)
        moved = moved or n == exc.index
    return moved


__all__ = ["STATUS_RACES", "moved_on_in_status", "same_but_status"]
