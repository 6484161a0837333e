"""`ResourceStore`: the one interface every store backend implements, and its watch event.

Objects are plain dicts in Kubernetes shape (`apiVersion`, `kind`, `metadata`, `spec`,
`status`).  The store is schema-agnostic: it reads only `kind`, `metadata.namespace` and
`metadata.name` (the key) and owns `metadata.uid`, `resourceVersion`, `generation` and
`creationTimestamp`.  Validation is the API layer's job.

Revisions: one global counter per store, like etcd's.  Every write bumps it by one; an object's
`metadata.resourceVersion` is the revision (as a string) of the write that produced it; `list`
returns the revision its result reflects, so `watch(since_revision=that)` continues from it
without a gap or a duplicate.  `batch` writes several objects in one transaction: each write
still gets its own revision, but watchers and readers see all of them or none.  Semantics in
docs/reference/stores.md.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

Obj: TypeAlias = dict[str, Any]
"""A stored object: a JSON-compatible dict in Kubernetes shape."""

EventType: TypeAlias = Literal["ADDED", "MODIFIED", "DELETED"]

BatchVerb: TypeAlias = Literal["create", "update", "update_status", "delete"]

LabelSelector: TypeAlias = str | Mapping[str, str]
"""Kubernetes selector syntax (`app=web,tier!=db,env in (a,b),!legacy`) or an equality map."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: the object after it (for DELETED: the object as deleted) and its revision.

    `object["metadata"]["resourceVersion"] == str(revision)`; each event's object is the
    watcher's own copy.
    """

    type: EventType
    object: Obj
    revision: int


@dataclass(frozen=True, slots=True)
class BatchOp:
    """One write of a `batch`: what `create(object)`, `update(object)`,
    `update_status(object)` or `delete` of the object's key would do (for delete,
    `metadata.resourceVersion`, if given, is the precondition).  `update_status` lets the
    control plane write the statuses of a compilation (virtual IPs, conditions) in one
    transaction rather than one per object (ADR 0109)."""

    verb: BatchVerb
    object: Obj


class ResourceStore(Protocol):
    """Kubernetes-like storage: optimistic concurrency by resourceVersion, list, and watch."""

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj:
        """The stored object; `NotFoundError` if absent."""

    async def list(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        label_selector: LabelSelector | None = None,
    ) -> tuple[list[Obj], int]:
        """Matching objects ordered by (kind, namespace, name), and the revision they reflect.

        `None` means "any" for kind and namespace.
        """

    async def list_page(
        self,
        kind: str,
        namespace: str | None,
        label_selector: LabelSelector | None,
        after: tuple[str, str, str] | None,
        limit: int,
    ) -> tuple[builtins.list[Obj], int, tuple[str, str, str] | None]:
        """At most `limit` matching objects of `kind` whose key comes after `after`, in key
        order; the revision this read reflects; the key to read on from, or None when no
        object follows.  Each page reads the store as it is then (not one revision for all)."""

    async def create(self, obj: Obj) -> Obj:
        """Store a new object; assigns uid, creationTimestamp, generation 1, resourceVersion.

        `AlreadyExistsError` if the key is taken.  Returns the stored object.
        """

    async def update(self, obj: Obj) -> Obj:
        """Replace spec, metadata labels/annotations and apiVersion; keep status, uid,
        creationTimestamp.

        Requires `metadata.resourceVersion` equal to the stored one (`ConflictError`
        otherwise, also when it is missing).  Bumps `generation` only when `spec` changed.
        """

    async def update_status(self, obj: Obj) -> Obj:
        """Replace `status` only; resourceVersion-checked like `update`; generation unchanged."""

    async def delete(
        self, kind: str, namespace: str | None, name: str, resource_version: str | None = None
    ) -> Obj:
        """Delete; with `resource_version`, only if it is still the stored one (`ConflictError`).

        Returns the object as deleted, its resourceVersion being the deletion's revision.
        """

    async def batch(self, ops: Sequence[BatchOp]) -> builtins.list[Obj]:
        """All `ops` in one transaction: every one is stored, or none is.

        Each write gets its own revision (consecutive, in `ops` order) and its own change-log
        entry, with the same rules as the single-object call; readers and watchers see the
        batch only once it is committed, all of it at once.  If any operation is refused
        (conflict, not found, already exists, invalid, or a key given twice) `BatchError`
        names it and nothing is written, no revision consumed.  Returns the stored objects in
        `ops` order (a deleted one as deleted).
        """

    def watch(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        since_revision: int | None = None,
        on_caught_up: Callable[[int], None] | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes in revision order: every change after `since_revision` (replayed from the
        change log, then live), or, without it, every change after the call.

        The changes are read in pages; `on_caught_up(revision)`, when given, is called each
        time the watcher has taken every change up to the head as it was read: a point between
        whole transactions (a page may end inside one).  With no kind or namespace filter,
        what the watcher has taken then is the store at that revision.

        Raises `ExpiredError` (when iterated) if changes after `since_revision` were compacted
        away, also later if the watcher falls that far behind.  Ends when the store closes.
        Close it with `aclose()` (e.g. `contextlib.aclosing`) when done.
        """

    async def close(self) -> None:
        """Release connections; running watches end."""
