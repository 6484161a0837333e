"""SIGTERM drains a real proxy process: in-flight requests finish, idle clients are closed, new
connections are refused, and the process exits 0 (also when the drain deadline cuts requests)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from tests.support.proxy import simple_config
from tests.support.rawhttp import RawClient
from tests.support.subproc import ProxyProcess, proxy_process


def _config(origin: int, drain_timeout_ms: int) -> dict[str, Any]:
    cfg = simple_config(origin, settings={"drain_timeout_ms": drain_timeout_ms})
    cfg["listeners"][0]["protocol"] = "http1"
    return cfg


async def test_sigterm_drains_in_flight_closes_idle_refuses_new(origin: int,
                                                                 tmp_path: Path) -> None:
    async with proxy_process(_config(origin, drain_timeout_ms=10_000), tmp_path) as p:
        idle = await RawClient.connect(p.port())
        first = await idle.request("GET", "/echo")
        assert first.status == 200
        assert "close" not in first.headers.get("connection", "")

        slow = await RawClient.connect(p.port())
        slow.send("GET", "/delay/1500")
        await p.wait_upstream_busy(1)

        p.signal(signal.SIGTERM)
        await p.wait_for(lambda: _not_ready(p), what="/ready to turn 503")

        assert await idle.closed_by_peer(timeout=5)
        with pytest.raises(ConnectionRefusedError):
            await RawClient.connect(p.port())

        r = await slow.response(timeout=10)
        assert (r.status, r.body) == (200, b"late\n")
        assert r.headers["connection"] == "close"
        assert await slow.closed_by_peer(timeout=5)

        assert await p.wait_exit() == 0
    assert "drained cleanly" in p.log()


async def _not_ready(p: ProxyProcess) -> bool:
    return (await p.admin("/ready"))[0] == 503


async def test_drain_deadline_aborts_what_is_left_and_exits_0(origin: int,
                                                              tmp_path: Path) -> None:
    async with proxy_process(_config(origin, drain_timeout_ms=300), tmp_path) as p:
        slow = await RawClient.connect(p.port())
        slow.send("GET", "/delay/3000")
        await p.wait_upstream_busy(1)

        code = await p.stop(timeout=15)  # long before the origin would answer

        assert code == 0
        assert await slow.closed_by_peer(timeout=1)  # the connection was aborted, no response
    assert "with connections aborted" in p.log()


async def test_second_sigterm_aborts_the_drain(origin: int, tmp_path: Path) -> None:
    async with proxy_process(_config(origin, drain_timeout_ms=60_000), tmp_path) as p:
        slow = await RawClient.connect(p.port())
        slow.send("GET", "/delay/3000")
        await p.wait_upstream_busy(1)

        p.signal(signal.SIGTERM)
        await p.wait_for(lambda: _not_ready(p), what="/ready to turn 503")
        p.signal(signal.SIGTERM)

        assert await p.wait_exit(timeout=15) == 0
        assert await slow.closed_by_peer(timeout=1)
    assert "second stop signal" in p.log()
