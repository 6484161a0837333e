"""The watch loop all backends share: read the change log after the last revision seen, yield,
then sleep until a write is announced.

Watchers never trust a notification's content, only that something changed: on every wake-up
they query the log for `revision > last`, so a notification lost, duplicated or reordered (a
dropped LISTEN connection, two replicas' NOTIFYs interleaving) costs at most a poll interval,
never an event.  Replay and live streaming are the same loop, which is why there is no gap and
no duplicate between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from tulle.controlplane.store.protocol import WatchEvent

BATCH = 500
"""Change rows read per query; a watcher far behind catches up in batches of this size."""


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Events after a revision (filtered) and how far the log was scanned.

    `scanned_to` is the last revision this read covered (the head revision, or the last row
    read when `more` is true), so a watcher advances past changes its filter skipped.
    """

    events: list[WatchEvent]
    scanned_to: int
    more: bool


class ChangeLog(Protocol):
    """What a backend gives the watch loop."""

    async def head_revision(self) -> int:
        """The revision of the last committed write."""

    async def changes_after(
        self, revision: int, kind: str | None, namespace: str | None, limit: int
    ) -> ChangeBatch:
        """Committed changes with revision > `revision`, oldest first, at most `limit`;
        `ExpiredError` if some of them were compacted away."""


class Notifier:
    """Wakes this process's watchers when a write may have been committed."""

    __slots__ = ("_closed", "_waiters")

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def close(self) -> None:
        self._closed = True
        self.notify()

    def subscribe(self) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)


async def follow(
    log: ChangeLog,
    notifier: Notifier,
    kind: str | None,
    namespace: str | None,
    since_revision: int | None,
    poll_interval: float,
    on_caught_up: Callable[[int], None] | None = None,
) -> AsyncGenerator[WatchEvent, None]:
    """Every change after `since_revision` (after "now" if None), then live, until closed.

    `poll_interval` bounds how long a change committed without a notification reaching us
    (another process on the same SQLite file, a LISTEN connection being re-established) waits.
    `on_caught_up(revision)` is called once the events of a read that reached the head have
    all been taken: the watcher has then seen every committed transaction whole, and nothing
    after (a read cut at `BATCH` rows may end inside a transaction; one that reached the head
    saw each transaction all or nothing, as committed).  ADR 0121.
    """
    waiter = notifier.subscribe()
    try:
        # Subscribed before reading the head: a write committed after this point wakes us.
        last = since_revision if since_revision is not None else await log.head_revision()
        while not notifier.closed:
            waiter.clear()
            batch = await log.changes_after(last, kind, namespace, BATCH)
            for event in batch.events:
                yield event
            last = max(last, batch.scanned_to)
            if batch.more:
                continue
            if on_caught_up is not None:
                on_caught_up(last)
            try:
                async with asyncio.timeout(poll_interval):
                    await waiter.wait()
            except TimeoutError:
                pass
    finally:
        notifier.unsubscribe(waiter)
