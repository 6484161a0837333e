"""Resilience audit, accounting and bounds (ADR 0106): what a request, a probe or a fault
takes (a cluster's request slot, an endpoint's in-flight count, a pooled connection, a retry
budget token) must come back however it ends.  Real proxies on 127.0.0.1 and raw peers; each
test fails on the defect it names.  Bounded: a few hundred requests at most."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import RawServer, connect, raw_server, read_response_within


async def until(cond: Any, what: str, tries: int = 300) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _health_hangs(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """200 to every request, except that a health check (`/health...`) is never answered: an
    application wedged in its health handler, or a peer that swallows requests."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        if head.startswith(b"GET /health"):
            await asyncio.Event().wait()  # holds this connection, as a wedged handler does
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_a_probe_cancelled_by_a_config_change_gives_back_its_request_slot() -> None:
    """A health-check probe is a try through the cluster's pool (ADR 0040): it holds a request
    slot, its endpoint's in-flight count and a connection until it ends.  A changed check (or
    an endpoint or cluster that leaves) cancels the probe task; only a timeout reset the try,
    so a cancelled probe to an endpoint that never answers kept all three for ever.  With
    `max_requests: 3`, three changes of the check path left the cluster full: every request
    503 UO, for good."""
    async with raw_server(_health_hangs) as o:
        cfg: dict[str, Any] = simple_config(o.port)
        cluster = cfg["clusters"][0]
        cluster["limits"] = {"max_requests": 3}
        cluster["health_check"] = {"type": "http", "path": "/health", "interval_ms": 60_000,
                                   "timeout_ms": 60_000, "jitter_ms": 0}
        async with running_proxy(cfg) as p:
            rt = p.server.clusters.clusters["backend"]

            def probes_sent() -> int:
                return sum(1 for h in o.requests if h.startswith(b"GET /health"))

            for i in range(3):
                await until(lambda i=i: probes_sent() == i + 1, f"probe {i + 1} in flight")
                changed = copy.deepcopy(cfg)
                changed["clusters"][0]["health_check"]["path"] = f"/health{i}"
                await p.apply(changed)
            await until(lambda: probes_sent() == 4, "the last check's probe in flight")
            # Only the probe of the check in force holds anything.
            assert (rt.limits.requests, rt.endpoints[0].active) == (1, 1)
            await until(lambda: rt.limits.connections == 1, "cancelled probes' connections closed")
            r, w = await connect(p.port())
            w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response_within(r)).status == 200
            w.close()


async def _status(port: int, path: bytes) -> int:
    r, w = await connect(port)
    try:
        w.write(b"GET %s HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % path)
        return (await read_response_within(r)).status
    finally:
        w.close()


async def test_the_global_window_needs_no_pexpire_nx() -> None:
    """The global window was `INCR`, `PEXPIRE key ms NX`, `PTTL`: `NX` is Redis 7.0's, and a
    Redis that refused it (6.x; here a real redis-server with PEXPIRE renamed away) left the
    counter without an expiry: the window never ended, and past the quota every request was 429
    for good -- on a `failure_mode: open` route too.  The window is now `SET key 0 PX ms NX`,
    `INCR`, `PTTL`: it works, and ends, on a Redis without PEXPIRE at all (ADR 0106)."""
    from bench.global_limit import proxy_config
    from tests.support.rawservers import answer_ok
    from tests.support.redis import redis_server

    origin = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    try:
        async with redis_server("--rename-command", "PEXPIRE", "") as redis:
            cfg = proxy_config(origin.sockets[0].getsockname()[1], redis.address, 3, 300, 200)
            async with running_proxy(cfg) as p:
                port = p.server.bound_port("in")
                first = [await _status(port, b"/closed") for _ in range(5)]
                await asyncio.sleep(0.4)  # longer than the 300 ms window
                again = await _status(port, b"/closed")
                assert (first, again) == ([200, 200, 200, 429, 429], 200)
                assert p.metric("tulle_proxy_rate_limit_backend_failures_total") == 0
    finally:
        origin.close()


async def test_a_counter_without_an_expiry_is_a_backend_failure_and_is_given_one() -> None:
    """A counter found without an expiry (made persistent by hand, or the window ended between
    the `SET` and the `INCR`) would never end its window.  That request is a backend failure
    (`failure_mode` decides, counted) and the proxy gives the counter its expiry back: the
    window then ends as any other."""
    from bench.global_limit import proxy_config
    from tests.support.rawservers import answer_ok
    from tests.support.redis import redis_server

    origin = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    try:
        async with redis_server() as redis:
            assert (await redis.command(b"SET", b"tulle:rl:bench/closed", b"100")) == b"+OK\r\n"
            cfg = proxy_config(origin.sockets[0].getsockname()[1], redis.address, 3, 300, 200)
            async with running_proxy(cfg) as p:
                port = p.server.bound_port("in")
                assert await _status(port, b"/closed") == 429  # failure_mode closed: refused
                assert p.metric("tulle_proxy_rate_limit_backend_failures_total") == 1
                ttl = int((await redis.command(b"PTTL", b"tulle:rl:bench/closed"))[1:])
                assert 0 < ttl <= 300
                assert await _status(port, b"/closed") == 429  # counted over quota: limited
                await asyncio.sleep(0.4)
                assert [await _status(port, b"/closed") for _ in range(2)] == [200, 200]
                assert p.metric("tulle_proxy_rate_limit_backend_failures_total") == 1
    finally:
        origin.close()
