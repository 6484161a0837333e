"""SIGTERM's propagation period (`settings.drain_propagation_ms`, ADR 0113) in a real proxy
process: the listeners keep accepting and serving, each HTTP/1 answer says `Connection: close`
and closes its connection (an idle one stays open), HTTP/2 connections get a GOAWAY that lets
every stream go on, `/ready` answers 503; a second SIGTERM ends the period and the drain that
follows is clean.  A `--config` proxy has no period unless its file sets one."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.support.controlplane import eventually
from tests.support.h2raw import RawH2, request
from tests.support.proxy import simple_config
from tests.support.rawhttp import RawClient
from tests.support.subproc import ProxyProcess, proxy_process


def _config(origin: int, protocol: str, period_ms: int | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"drain_timeout_ms": 10_000}
    if period_ms is not None:
        settings["drain_propagation_ms"] = period_ms
    return simple_config(origin, protocol=protocol, settings=settings)


async def _not_ready(p: ProxyProcess) -> bool:
    return (await p.admin("/ready"))[0] == 503


async def test_http1_is_served_with_connection_close_until_a_second_sigterm(
        origin: int, tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "http1", 60_000), tmp_path) as p:
        idle = await RawClient.connect(p.port())
        assert (await idle.request("GET", "/echo")).status == 200

        p.signal(signal.SIGTERM)
        await p.wait_for(lambda: _not_ready(p), what="/ready to turn 503")
        # A new connection is accepted and served, then closed.
        fresh = await RawClient.connect(p.port())
        r = await fresh.request("GET", "/echo")
        assert (r.status, r.headers["connection"]) == (200, "close")
        assert await fresh.closed_by_peer(timeout=5)
        # A kept-alive connection was left open: its next request is served, then it closes.
        r = await idle.request("GET", "/echo")
        assert (r.status, r.headers["connection"]) == (200, "close")
        assert await idle.closed_by_peer(timeout=5)

        t = time.monotonic()
        p.signal(signal.SIGTERM)  # ends the period; the drain that follows has nothing left
        assert await p.wait_exit(timeout=15) == 0
        assert time.monotonic() - t < 10
    log = p.log()
    assert "still accepting for 60000 ms" in log
    assert "drained cleanly" in log and "second stop signal" not in log


async def test_http2_gets_a_goaway_that_lets_its_streams_go_on(origin: int,
                                                               tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "http2", 60_000), tmp_path) as p:
        c = await RawH2.connect(p.port())
        sid = c.headers(request("GET", "/echo"))
        await c.wait_stream(sid)

        p.signal(signal.SIGTERM)
        await p.wait_for(lambda: _not_ready(p), what="/ready to turn 503")
        await eventually(lambda: bool(c.goaways))
        assert c.goaways == [2**31 - 1]  # no stream is refused by it
        sid = c.headers(request("GET", "/echo"))  # one that crossed it is served
        await c.wait_stream(sid)
        assert c.status[sid] == 200 and not c.closed.is_set()

        p.signal(signal.SIGTERM)
        await c.wait_closed(timeout=10)
        assert c.goaways == [2**31 - 1, sid]  # then the final one, naming the last stream
        assert await p.wait_exit(timeout=15) == 0


async def test_a_config_proxy_has_no_period_unless_its_file_sets_one(origin: int,
                                                                     tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "http1", None), tmp_path) as p:
        p.signal(signal.SIGTERM)
        assert await p.wait_exit(timeout=15) == 0
    assert "still accepting" not in p.log()
