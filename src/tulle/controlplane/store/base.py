"""`StoreBase`: the `ResourceStore` API built once on four backend primitives.

A backend implements `_read` (one object), `_scan` (objects of a kind/namespace plus the
revision they reflect), `_write_batch` (one transaction: bump the revision by the number of
writes, read each object, apply its `Mutation`, write the rows and the change-log entries —
or, if any mutation raises, nothing) and the `ChangeLog` reads the watch loop needs.  A single
write is a batch of one unless the backend has a faster `_write`.  The
API rules (what create/update/delete do to an object) live in `objects.py`, watching in
`watch.py`: backends only store.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence

from tulle.controlplane.store.errors import BatchError, InvalidObjectError, NotFoundError, StoreError
from tulle.controlplane.store.labels import compile_selector, labels_of
from tulle.controlplane.store.objects import (
    Change,
    Key,
    Mutation,
    creating,
    deleting,
    describe,
    key_of,
    make_key,
    resource_version,
    updating,
    updating_status,
)
from tulle.controlplane.store.protocol import BatchOp, LabelSelector, Obj, WatchEvent
from tulle.controlplane.store.watch import ChangeBatch, Notifier, follow

DEFAULT_CHANGES_RETAINED = 10_000
"""Change-log rows kept for watch replay; a watch from an older revision gets ExpiredError."""

DEFAULT_POLL_INTERVAL = 5.0
"""Seconds a watcher waits for a notification before re-reading the change log anyway."""


class StoreBase(ABC):
    """Shared implementation of `ResourceStore`; see protocol.py for the contract."""

    def __init__(self, *, changes_retained: int, poll_interval: float) -> None:
        if changes_retained < 1:
            raise ValueError("changes_retained must be at least 1")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._retained = changes_retained
        self._poll_interval = poll_interval
        self._notifier = Notifier()

    # -- backend primitives -------------------------------------------------------------------

    @abstractmethod
    async def _read(self, key: Key) -> Obj | None: ...

    @abstractmethod
    async def _scan(self, kind: str | None, namespace: str | None, after: Key | None = None,
                    limit: int | None = None) -> tuple[list[Obj], int]:
        """Objects of `kind` / `namespace` in key order, only those whose key is greater than
        `after` and at most `limit` of them when given, and the revision they reflect."""
        ...

    @abstractmethod
    async def _write_batch(self, writes: Sequence[tuple[Key, Mutation]]) -> list[Change]:
        """Apply every mutation in one transaction (keys are distinct); the i-th write gets
        revision head + 1 + i.  A mutation that raises rolls everything back."""

    async def _write(self, key: Key, mutation: Mutation) -> Change:
        return (await self._write_batch([(key, mutation)]))[0]

    @abstractmethod
    async def head_revision(self) -> int: ...

    @abstractmethod
    async def changes_after(
        self, revision: int, kind: str | None, namespace: str | None, limit: int
    ) -> ChangeBatch: ...

    @abstractmethod
    async def _close(self) -> None: ...

    # -- ResourceStore ----------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj:
        key = make_key(kind, namespace, name)
        obj = await self._read(key)
        if obj is None:
            raise NotFoundError(f"{describe(key)} not found")
        return obj

    async def list(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        label_selector: LabelSelector | None = None,
    ) -> tuple[list[Obj], int]:
        match = compile_selector(label_selector) if label_selector is not None else None
        items, revision = await self._scan(kind, namespace)
        if match is not None:
            items = [obj for obj in items if match(labels_of(obj))]
        return items, revision

    async def list_page(
        self,
        kind: str,
        namespace: str | None,
        label_selector: LabelSelector | None,
        after: Key | None,
        limit: int,
    ) -> tuple[builtins.list[Obj], int, Key | None]:
        match = compile_selector(label_selector) if label_selector is not None else None
        out: builtins.list[Obj] = []
        revision = 0
        # Reads `limit + 1` at a time, so a full page knows whether anything follows; with a
        # selector, reads on until the page is full or the kind is read (each read moves
        # `after` on: the loop ends).
        while True:
            chunk, revision = await self._scan(kind, namespace, after, limit + 1)
            more = len(chunk) > limit
            for obj in chunk[:limit]:
                after = key_of(obj)
                if match is None or match(labels_of(obj)):
                    out.append(obj)
                    if len(out) == limit:
                        return out, revision, after if (more or obj is not chunk[-1]) else None
            if not more:
                return out, revision, None

    async def create(self, obj: Obj) -> Obj:
        key, mutation = creating(obj)
        return await self._commit(key, mutation)

    async def update(self, obj: Obj) -> Obj:
        key, mutation = updating(obj)
        return await self._commit(key, mutation)

    async def update_status(self, obj: Obj) -> Obj:
        key, mutation = updating_status(obj)
        return await self._commit(key, mutation)

    async def delete(
        self, kind: str, namespace: str | None, name: str, resource_version: str | None = None
    ) -> Obj:
        key = make_key(kind, namespace, name)
        return await self._commit(key, deleting(key, resource_version))

    async def batch(self, ops: Sequence[BatchOp]) -> builtins.list[Obj]:
        writes: list[tuple[Key, Mutation]] = []
        seen: dict[Key, int] = {}
        for i, op in enumerate(ops):
            try:
                key, mutation = _planned(op)
            except StoreError as exc:
                raise BatchError(i, exc) from exc
            first = seen.setdefault(key, i)
            if first != i:
                raise BatchError(i, InvalidObjectError(
                    f"{describe(key)} is also operation {first}: one batch writes a key once"),
                    duplicate_of=first)
            writes.append((key, _indexed(i, mutation)))
        if not writes:
            return []
        changes = await self._write_batch(writes)
        self._notifier.notify()
        return [c.object for c in changes]

    def watch(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        since_revision: int | None = None,
        on_caught_up: Callable[[int], None] | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        return follow(self, self._notifier, kind, namespace, since_revision, self._poll_interval,
                      on_caught_up)

    async def close(self) -> None:
        if self._notifier.closed:
            return
        self._notifier.close()
        await self._close()

    async def _commit(self, key: Key, mutation: Mutation) -> Obj:
        change = await self._write(key, mutation)
        self._notifier.notify()
        return change.object


def _planned(op: BatchOp) -> tuple[Key, Mutation]:
    if op.verb == "create":
        return creating(op.object)
    if op.verb == "update":
        return updating(op.object)
    if op.verb == "update_status":
        return updating_status(op.object)
    if op.verb == "delete":
        key = key_of(op.object)
        return key, deleting(key, resource_version(op.object))
    raise InvalidObjectError(f"unknown batch verb {op.verb!r}")


def _indexed(index: int, mutation: Mutation) -> Mutation:
    """`mutation`, whose refusal names its place in the batch."""

    def mutate(current: Obj | None, revision: int) -> Change:
        try:
            return mutation(current, revision)
        except StoreError as exc:
            raise BatchError(index, exc) from exc

    return mutate
