"""`GET /api/v1/resources/{type}?watch=true`: a Kubernetes-shaped watch of one kind (ADR 0104).

`tulle get -w` polled the list once a second, so changes inside a second printed once and an
object created and deleted between two polls never showed (ADR 0102).  The store already has
a watch with no gap and no duplicate (ADR 0008); this streams it to API callers as kubectl's
clients expect it:

- `resourceVersion=N` (the list's `metadata.resourceVersion`): every change after N, in
  revision order; without it, the changes after the revision the watch starts from.
- The list's filters: the kind, `namespace` (namespaced kinds; none: all namespaces) and
  `labelSelector`.  With a selector, an object that stops matching is DELETED for this watch
  and one that starts matching ADDED, as Kubernetes does.
- `application/x-ndjson`, one `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}` a
  line; `{"type": "ERROR", "object": <a Status>}` ends the stream: 410 when N is older than the
  change log keeps or the watcher fell `WatchLimits.queue` events behind (re-list and watch
  again), 401 when the token was revoked.
- A heartbeat every `WatchLimits.heartbeat` seconds: a BOOKMARK carrying the revision the
  watch has reached when `allowWatchBookmarks=true`, else an empty line.  The token is asked
  again at each one (a revoked token ends the watch, as it ends a tap: ADR 0102 decision 5).

Bounds: a watch holds a slot (`per_token` per token, `total` per control plane: 429); events
wait in a queue of at most `queue` entries and `queue_bytes` bytes; a write to the caller
that does not complete within `stall` seconds closes the connection, so a caller that stops
reading holds a bounded buffer and, after `stall`, nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tulle.api.registry import KindInfo
from tulle.controlplane.api.api_tokens import Principal, TokenStore
from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.store.errors import ExpiredError
from tulle.controlplane.store.labels import compile_selector, labels_of
from tulle.controlplane.store.protocol import ResourceStore, WatchEvent

MAX_RESOURCE_VERSION_DIGITS = 19
"""A revision is a signed 64-bit counter in the SQL stores."""


@dataclass(frozen=True, slots=True)
class WatchLimits:
    """What one control plane allows its watchers; constants in production, set in tests."""

    heartbeat: float = 10.0
    """Seconds between heartbeats; the token is re-checked at each (≤ 10 s, the brief of
    ADR 0104: a revocation takes effect within it)."""
    per_token: int = 8
    """Watches one token (one principal) may hold at once; `tulle get -w` uses one per kind."""
    total: int = 256
    """Watches the control plane serves at once."""
    queue: int = 1000
    """Events a watcher may be behind before it is ended with a 410 ERROR."""
    queue_bytes: int = 2 << 20
    """Bytes of rendered events a watcher may be behind, likewise (objects can be large)."""
    stall: float = 30.0
    """Seconds one write to the caller may block (it stopped reading) before the connection
    is closed."""


@dataclass(slots=True)
class WatchSlots:
    """Counts of running watches, per principal subject and in all."""

    limits: WatchLimits
    by_subject: collections.Counter[str] = field(default_factory=collections.Counter)
    total: int = 0

    def take(self, subject: str) -> str | None:
        """Why a new watch for `subject` is refused, or None (and the slot is taken)."""
        if self.total >= self.limits.total:
            return f"too many watches on this control plane (at most {self.limits.total})"
        if self.by_subject[subject] >= self.limits.per_token:
            return f"too many watches for this token (at most {self.limits.per_token} at once)"
        self.by_subject[subject] += 1
        self.total += 1
        return None

    def give(self, subject: str) -> None:
        self.total -= 1
        self.by_subject[subject] -= 1
        if self.by_subject[subject] <= 0:
            del self.by_subject[subject]


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """An ERROR event in Kubernetes' shape (a `Status` object), e.g. 410 Expired."""
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Failure", "message": message,
                                        "reason": reason, "code": code}}


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return str(md.get("namespace") or ""), str(md.get("name") or "")


class WatchResponse(StreamingResponse):
    """A streamed answer whose every write must complete within `stall` seconds.

    uvicorn's `send` waits while the socket's buffer is full (the caller stopped reading);
    that wait is where a stalled caller is noticed.  The connection is then closed through the
    API guard's `tulle.abort` (http_guard.py), so the stream and its slot end; the buffer a
    caller can hold is the transport's high-water mark plus the kernel's."""

    def __init__(self, content: AsyncGenerator[bytes, None], stall: float,
                 abort: Callable[[], None] | None, release: Callable[[], None]) -> None:
        super().__init__(content, media_type="application/x-ndjson",
                         headers={"cache-control": "no-store"})
        self.lines = content
        self.stall = stall
        self.abort = abort
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The slot is given back however the answer ends, also when the caller went away
        before the first line (the generator's own `finally` would never run then)."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.lines.aclose()
            self.release()

    async def stream_response(self, send: Send) -> None:
        async def timed(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall):
                    await send(message)
            except TimeoutError:
                if self.abort is None:
                    raise  # (uvicorn logs it and closes the connection)
                self.abort()
                # The disconnect this causes ends the answer (StreamingResponse listens for
                # it and cancels this): no error for uvicorn to log.
                await asyncio.sleep(5.0)
                raise
        await super().stream_response(timed)


class Watches:
    """The watch half of the resource list endpoint."""

    def __init__(self, store: ResourceStore, tokens: TokenStore,
                 limits: WatchLimits | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.limits = limits if limits is not None else WatchLimits()
        self.slots = WatchSlots(self.limits)
        self.closing = False
        self._running: set[asyncio.Event] = set()

    def close(self) -> None:
        """End every watch (their answers complete): uvicorn's shutdown waits for open answers
        to finish, and a watch would never finish on its own."""
        self.closing = True
        for wake in self._running:
            wake.set()

    async def respond(self, request: Request, info: KindInfo, namespace: str | None,
                      selector: str | None, resource_version: str | None,
                      bookmarks: bool) -> Any:
        """The watch answer, or an error answer (400, 429) before anything is streamed."""
        since: int | None = None
        if resource_version:
            if not (resource_version.isascii() and resource_version.isdigit()
                    and len(resource_version) <= MAX_RESOURCE_VERSION_DIGITS):
                return _error(400, "resourceVersion: must be a revision (digits), as the "
                                   "list's metadata.resourceVersion")
            since = int(resource_version)
        ns = namespace if info.namespaced else None
        try:
            matches = compile_selector(selector) if selector else None
        except ValueError as exc:
            return _error(400, f"invalid labelSelector: {exc}")
        principal = request.scope.get("tulle.principal")
        subject = principal.subject if isinstance(principal, Principal) else ""
        if refused := self.slots.take(subject):
            return _error(429, refused)
        matched: set[tuple[str, str]] = set()
        start = since
        if since is None or matches is not None:
            try:
                # Without a resourceVersion the watch starts at the revision a list reflects:
                # bookmarks then carry a revision, and "now" is one point for all filters.
                # With a selector, the keys that match now are those a non-match deletes.
                items, head = await self.store.list(info.kind, ns, selector or None)
            except BaseException:
                self.slots.give(subject)
                raise
            matched = {_key(o) for o in items} if matches is not None else set()
            start = since if since is not None else head
        assert start is not None
        lines = self._lines(info, ns, start, matches, matched, bookmarks, principal)
        abort = request.scope.get("tulle.abort")
        return WatchResponse(lines, self.limits.stall, abort if callable(abort) else None,
                             lambda: self.slots.give(subject))

    async def _lines(self, info: KindInfo, ns: str | None, since: int,
                     matches: Callable[[Any], bool] | None, matched: set[tuple[str, str]],
                     bookmarks: bool, principal: object) -> AsyncGenerator[bytes, None]:
        limits = self.limits
        # (revision, line): the line is None for an event this watch does not show (it still
        # moves the revision a bookmark carries).  Lines are rendered as they are queued, so
        # the queue is bounded in bytes as well as in entries.
        pending: collections.deque[tuple[int, bytes | None]] = collections.deque()
        size = [0]
        wake = asyncio.Event()
        ended: list[dict[str, Any]] = []

        async def pump() -> None:
            """Store events into `pending`; stops (and says why) when the watcher is
            `limits.queue` events or `limits.queue_bytes` behind, so a slow reader costs a
            bounded queue."""
            try:
                async with contextlib.aclosing(self.store.watch(info.kind, ns, since)) as w:
                    async for event in w:
                        if len(pending) >= limits.queue or size[0] >= limits.queue_bytes:
                            ended.append(status(410, "Expired", (
                                f"the watcher fell behind (more than {limits.queue} events "
                                f"or {limits.queue_bytes} bytes); list again and watch from "
                                "the list's resourceVersion")))
                            return
                        shown = self._shown(event, matches, matched)
                        line = (_line({"type": shown, "object": event.object})
                                if shown is not None else None)
                        size[0] += len(line or b"")
                        pending.append((event.revision, line))
                        wake.set()
                ended.append(status(503, "ServiceUnavailable", "the store closed"))
            except ExpiredError as exc:
                ended.append(status(410, "Expired", f"too old resource version: {exc}; list "
                                                    "again and watch from the list's "
                                                    "resourceVersion"))
            finally:
                wake.set()

        loop = asyncio.get_running_loop()
        task = loop.create_task(pump())
        self._running.add(wake)
        last = since
        try:
            beat = loop.time() + limits.heartbeat
            while True:
                while pending:
                    last, line = pending.popleft()
                    if line is not None:
                        size[0] -= len(line)
                        yield line
                if ended:
                    yield _line(ended[0])
                    return
                if self.closing:
                    return
                now = loop.time()
                if now >= beat:
                    if isinstance(principal, Principal) and not await self.tokens.still_valid(
                            principal):
                        yield _line(status(401, "Unauthorized", "the token was revoked"))
                        return
                    beat = now + limits.heartbeat
                    if bookmarks:
                        yield _line({"type": "BOOKMARK", "object": {
                            "kind": info.kind, "apiVersion": info.api_version,
                            "metadata": {"resourceVersion": str(last)}}})
                    else:
                        yield b"\n"
                    continue
                wake.clear()
                if pending or ended or self.closing:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(beat - now):
                        await wake.wait()
        finally:
            self._running.discard(wake)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    def _shown(event: WatchEvent, matches: Callable[[Any], bool] | None,
               matched: set[tuple[str, str]]) -> str | None:
        """The event type this watch shows for `event` (None: not this watch's), following
        Kubernetes for label selectors: entering the selection is ADDED, leaving it DELETED."""
        if matches is None:
            return event.type
        key = _key(event.object)
        now = matches(labels_of(event.object))
        was = key in matched
        if event.type == "DELETED":
            matched.discard(key)
            return "DELETED" if was or now else None
        if now:
            matched.add(key)
            return "MODIFIED" if was and event.type == "MODIFIED" else "ADDED"
        if was:
            matched.discard(key)
            return "DELETED"
        return None


__all__ = ["WatchLimits", "WatchResponse", "WatchSlots", "Watches", "status"]
