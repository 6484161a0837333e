"""SIGTERM's order for a proxy fed by the control plane (`subscribed.shut_down`, ADR 0092),
against a control plane played by a raw stream server that records every frame it gets.

With a control plane that takes `Draining` (its `StatsRequest` says so), the proxy says it,
keeps the stream through the drain (stats reports flowing, no config taken, no NACK), sends a
last report after the drain and never reconnects.  With one from before it, the proxy sends
no `Draining` (that control plane could not decode it) and leaves the stream before it
drains, as ADR 0040 has it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from tests.support.controlplane import serve_handler
from tests.support.newer_cp import AgentOnV1, agent_on_v1, config, frame

from tulle.dataplane.subscribed import shut_down
from tulle.proxyconfig.stream import Draining, Message, StatsReport

SLOW = 1.0


async def _slow_call(a: AgentOnV1) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{a.listen}/slow") as r:
        return r.status, await r.text()


def _origin(started: asyncio.Event) -> Any:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            started.set()
            await asyncio.sleep(SLOW)
        return web.Response(text="ok")
    return handler


async def _drain_inbox(a: AgentOnV1) -> list[Message]:
    out: list[Message] = []
    while not a.cp.inbox.empty():
        out.append(a.cp.inbox.get_nowait())
    return out


async def test_a_control_plane_that_takes_draining_keeps_the_stream_through_the_drain() -> None:
    started = asyncio.Event()
    async with serve_handler(_origin(started)) as origin, agent_on_v1(origin) as a:
        _send(a, {"type": "stats-request", "interval_ms": 200, "draining": True})
        assert isinstance(await _next(a), StatsReport)  # reporting
        slow = asyncio.ensure_future(_slow_call(a))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.ensure_future(shut_down(a.agent, a.task, a.proxy, 5.0))
        while not isinstance(msg := await _next(a), Draining):  # (a report may come first)
            assert isinstance(msg, StatsReport), msg
        # Draining: still on the stream, still reporting; a config pushed now is not taken
        # and not answered (no NACK), and the stream stays open.
        _send(a, {"type": "snapshot", "version": "v2",
                  "config": config("v2", a.listen, a.origin, "/v2")})
        assert isinstance(await _next(a), StatsReport)
        assert not a.cp.ended.is_set() and not stopping.done()
        assert await slow == (200, "ok")  # the drain let it finish
        await _drain_inbox(a)
        await stopping
        await asyncio.wait_for(a.cp.ended.wait(), 5)
        # A report sent after the slow request ended, on the same stream: what the drain
        # served is reported (counted by a real control plane in test_stat.py).
        rest = await _drain_inbox(a)
        assert rest and all(isinstance(m, StatsReport) for m in rest), rest
        await asyncio.sleep(0.3)  # (backoff here is 10-50 ms: a reconnect would be seen)
        assert a.cp.connections == 1


async def test_a_draining_proxy_whose_stream_breaks_does_not_reconnect() -> None:
    started = asyncio.Event()
    async with serve_handler(_origin(started)) as origin, agent_on_v1(origin) as a:
        _send(a, {"type": "stats-request", "interval_ms": 60_000, "draining": True})
        slow = asyncio.ensure_future(_slow_call(a))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.ensure_future(shut_down(a.agent, a.task, a.proxy, 5.0))
        assert isinstance(await _next(a), StatsReport)  # what was served up to the signal
        assert isinstance(await _next(a), Draining)
        assert a.cp.writer is not None
        a.cp.writer.close()  # the control plane goes away mid-drain
        await asyncio.sleep(0.3)
        # Reconnecting would make it an endpoint again, with its listeners closed.
        assert a.cp.connections == 1
        assert await slow == (200, "ok")
        await stopping


async def test_a_control_plane_from_before_draining_sees_the_stream_left_first() -> None:
    started = asyncio.Event()
    async with serve_handler(_origin(started)) as origin, agent_on_v1(origin) as a:
        _send(a, {"type": "stats-request", "interval_ms": 60_000})
        slow = asyncio.ensure_future(_slow_call(a))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.ensure_future(shut_down(a.agent, a.task, a.proxy, 5.0))
        await asyncio.wait_for(a.cp.ended.wait(), 5)  # left at once: out of the endpoints
        assert not slow.done()
        got = await _drain_inbox(a)
        assert not any(isinstance(m, Draining) for m in got), got
        assert [type(m) for m in got] == [StatsReport]  # the last report, before leaving
        assert await slow == (200, "ok")
        await stopping


def _send(a: AgentOnV1, doc: dict[str, Any]) -> None:
    assert a.cp.writer is not None
    a.cp.writer.write(frame(doc))


async def _next(a: AgentOnV1) -> Message:
    async with asyncio.timeout(5):
        return await a.cp.inbox.get()

