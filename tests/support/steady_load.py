"""A steady client for "does traffic survive this change" tests: paced GETs through a proxy on
keep-alive connections and on a fresh connection each, every answer (or error) recorded with
its time, so a test counts the failures of a window and sees which backend answered.

    async with steady_load(url, host="api") as load:
        ... make a change ...
    assert load.failures() == []

Paced on the event loop (a request every 1/rate s, each its own task, so a slow answer does
not hold the next one back); a few hundred requests a second is what it is for, not a
benchmark (`bench/` has the thread-paced generator, ADR 0089).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True, slots=True)
class Answer:
    at: float
    """`time.monotonic()` when the request was sent."""
    kind: str
    """"keep-alive" or "fresh"."""
    status: int
    """0: no answer (`error` says why)."""
    body: bytes = b""
    error: str = ""


@dataclass
class SteadyLoad:
    url: str
    host: str
    answers: list[Answer] = field(default_factory=list)

    def failures(self, since: float = 0.0) -> list[Answer]:
        """Answers that are not 200, sent at `since` or later."""
        return [a for a in self.answers if a.at >= since and a.status != 200]

    def bodies(self, since: float = 0.0) -> set[bytes]:
        return {a.body for a in self.answers if a.at >= since and a.status == 200}

    async def _one(self, s: aiohttp.ClientSession, kind: str) -> None:
        at = time.monotonic()
        try:
            async with s.get(self.url, headers={"Host": self.host}) as r:
                self.answers.append(Answer(at, kind, r.status, await r.read()))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.answers.append(Answer(at, kind, 0, error=f"{type(exc).__name__}: {exc}"))

    async def _pace(self, s: aiohttp.ClientSession, rate: float, kind: str,
                    stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start, n = time.monotonic(), 0
        while not stop.is_set():
            n += 1
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.get_running_loop().create_task(self._one(s, kind))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=10)


@contextlib.asynccontextmanager
async def steady_load(url: str, host: str, *, rate: float = 200,
                      fresh_rate: float = 50) -> AsyncIterator[SteadyLoad]:
    """`rate` requests a second on a pool of keep-alive connections and `fresh_rate` on a new
    connection each, until the block ends (then the requests in flight are awaited)."""
    load = SteadyLoad(url, host)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8),
                                     timeout=timeout) as kept, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16),
                                  timeout=timeout) as fresh:
        tasks = [asyncio.ensure_future(load._pace(kept, rate, "keep-alive", stop)),
                 asyncio.ensure_future(load._pace(fresh, fresh_rate, "fresh", stop))]
        try:
            yield load
        finally:
            stop.set()
            await asyncio.gather(*tasks)
