"""The in-memory store: the contract with nothing behind it, for tests and throwaway runs.

Objects are kept as JSON text, like the SQL backends keep them, so every read hands out a fresh
copy and a caller can never mutate stored state.  Writes (a batch too) run without an `await`
between reading and writing, so the event loop is the transaction.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from tulle.controlplane.store.base import DEFAULT_CHANGES_RETAINED, DEFAULT_POLL_INTERVAL, StoreBase
from tulle.controlplane.store.errors import ExpiredError
from tulle.controlplane.store.objects import Change, Key, Mutation, decode, encode
from tulle.controlplane.store.protocol import EventType, Obj, WatchEvent
from tulle.controlplane.store.watch import ChangeBatch


class _Logged(NamedTuple):
    revision: int
    type: EventType
    key: Key
    text: str


class MemoryStore(StoreBase):
    """All state in this process; gone when it ends."""

    def __init__(
        self,
        *,
        changes_retained: int = DEFAULT_CHANGES_RETAINED,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        super().__init__(changes_retained=changes_retained, poll_interval=poll_interval)
        self._rows: dict[Key, str] = {}
        self._log: deque[_Logged] = deque()
        self._revision = 0
        self._compacted = 0

    async def _read(self, key: Key) -> Obj | None:
        text = self._rows.get(key)
        return None if text is None else decode(text)

    async def _scan(self, kind: str | None, namespace: str | None, after: Key | None = None,
                    limit: int | None = None) -> tuple[list[Obj], int]:
        keys = sorted(
            k for k in self._rows
            if (kind is None or k[0] == kind) and (namespace is None or k[1] == namespace)
            and (after is None or k > after)
        )
        return [decode(self._rows[k]) for k in keys[:limit]], self._revision

    async def _write_batch(self, writes: Sequence[tuple[Key, Mutation]]) -> list[Change]:
        # Every mutation runs (and may refuse) before anything is kept; no `await` in
        # between, so no reader or watcher can see part of the batch.
        staged: list[tuple[Change, str]] = []
        for i, (key, mutation) in enumerate(writes):
            text = self._rows.get(key)
            change = mutation(None if text is None else decode(text), self._revision + 1 + i)
            staged.append((change, encode(change.object)))
        for change, stored in staged:
            self._revision += 1
            if change.type == "DELETED":
                del self._rows[change.key]
            else:
                self._rows[change.key] = stored
            self._log.append(_Logged(self._revision, change.type, change.key, stored))
        while len(self._log) > self._retained:
            self._compacted = self._log.popleft().revision
        return [change for change, _ in staged]

    async def head_revision(self) -> int:
        return self._revision

    async def changes_after(
        self, revision: int, kind: str | None, namespace: str | None, limit: int
    ) -> ChangeBatch:
        if revision < self._compacted:
            raise ExpiredError(
                f"revision {revision} is compacted (changes after {self._compacted} are kept)"
            )
        # Revisions are gapless here, so the first entry after `revision` sits at a known index.
        start = max(0, revision - self._compacted)
        events: list[WatchEvent] = []
        scanned = max(revision, self._revision)
        for entry in itertools.islice(self._log, start, None):
            if len(events) == limit:
                return ChangeBatch(events, events[-1].revision, True)
            if (kind is None or entry.key[0] == kind) and (namespace is None or entry.key[1] == namespace):
                events.append(WatchEvent(entry.type, decode(entry.text), entry.revision))
        return ChangeBatch(events, scanned, False)

    async def _close(self) -> None:
        """Nothing to release; watchers end through the notifier."""
