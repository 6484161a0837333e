"""Cluster limits through a real proxy: past a limit a request is answered 503 UO at once, the
listener keeps serving, and when the traffic is over every count is back at zero.

A request is held in flight by sending its body only in part: the origin (aiohttp for HTTP/1,
the h2 origin for HTTP/2) answers once the body is complete."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import connect, half_then_reset, raw_server, read_response_within

from tulle.dataplane.upstream.cluster import ClusterRuntime


def limited(port: int, limits: dict[str, int], **kw: Any) -> dict[str, Any]:
    cfg = simple_config(port, **kw)
    cfg["clusters"][0]["limits"] = limits
    return cfg


def backend(p: RunningProxy) -> ClusterRuntime:
    return p.server.clusters.clusters["backend"]


async def until(cond: Any, what: str) -> None:
    for _ in range(300):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def all_counts_back_to_zero(p: RunningProxy) -> None:
    rt = backend(p)
    await until(lambda: (rt.limits.requests, rt.limits.pending, rt.limits.retries) == (0, 0, 0)
                and all(e.active == 0 for e in rt.endpoints), "counts back to zero")


async def held_post(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await connect(port)
    w.write(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
    return r, w


async def test_http1_past_the_pending_limit_is_503_uo_and_the_listener_keeps_serving(
        origin: int) -> None:
    cfg = limited(origin, {"max_connections": 1, "max_pending_requests": 1})
    async with running_proxy(cfg) as p:
        rt = backend(p)
        r1, w1 = await held_post(p.port())
        await until(lambda: rt.limits.requests == 1 and rt.limits.pending == 0, "A on a conn")
        r2, w2 = await connect(p.port())
        w2.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: rt.limits.pending == 1, "B waiting for the one connection")
        r3, w3 = await connect(p.port())
        w3.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        over = await read_response_within(r3)
        assert over.status == 503 and b"limit of 1 pending" in over.body
        w1.write(b"56789")  # A completes; B takes its connection
        assert (await read_response_within(r1)).status == 200
        assert (await read_response_within(r2)).status == 200
        w3.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")  # the refused client, served now
        assert (await read_response_within(r3)).status == 200
        for w in (w1, w2, w3):
            w.close()
        assert p.metric("tulle_proxy_requests_total", response_code="503",
                        response_flags="UO") == 1
        assert p.metric("tulle_proxy_upstream_overflow_total", cluster="backend",
                        limit="pending") == 1
        assert p.metric("tulle_proxy_upstream_connections_total") == 1
        await all_counts_back_to_zero(p)


async def test_http2_past_max_requests_is_503_uo_and_the_connection_keeps_serving() -> None:
    async with running_h2_origin() as (port, _), running_proxy(limited(
            port, {"max_requests": 1}, protocol="http2", cluster_protocol="http2")) as p:
        c = await H2Client.connect(p.port())
        held, held_r = c.start("POST", "/sink", end_stream=False)
        await until(lambda: backend(p).limits.requests == 1, "the held stream in flight")
        over = await c.request("GET", "/echo")
        assert over.status == 503 and b"limit of 1 requests" in over.body
        await c.send_body(held, b"body")
        await held_r.done.wait()
        assert held_r.status == 200
        assert (await c.request("GET", "/echo")).status == 200  # same client connection
        c.close()
        assert p.metric("tulle_proxy_requests_total", response_flags="UO") == 1
        assert p.metric("tulle_proxy_upstream_overflow_total", limit="requests") == 1
        await all_counts_back_to_zero(p)


async def test_http2_upstream_waiting_queue_is_bounded_by_max_pending() -> None:
    cfg = limited(0, {"max_connections": 1, "max_pending_requests": 1},
                  protocol="http2", cluster_protocol="http2")
    cfg["clusters"][0]["max_concurrent_streams"] = 1
    async with running_h2_origin() as (port, origin):
        cfg["clusters"][0]["endpoints"][0]["port"] = port
        async with running_proxy(cfg) as p:
            rt = backend(p)
            c = await H2Client.connect(p.port())
            held, held_r = c.start("POST", "/sink", end_stream=False)
            await until(lambda: rt.limits.requests == 1 and rt.limits.pending == 0, "held")
            _, waiting_r = c.start("GET", "/echo")
            await until(lambda: rt.limits.pending == 1, "the second waiting for room")
            over = await c.request("GET", "/echo")
            assert over.status == 503 and b"pending" in over.body
            await c.send_body(held, b"body")
            await waiting_r.done.wait()
            assert (held_r.status, waiting_r.status) == (200, 200)
            assert origin.connections == 1  # the one connection the limit allows
            c.close()
            assert p.metric("tulle_proxy_upstream_overflow_total", limit="pending") == 1
            await all_counts_back_to_zero(p)


async def test_in_flight_counts_return_to_zero_after_success_failure_and_reset(
        origin: int) -> None:
    async with raw_server(half_then_reset) as broken:
        cfg = simple_config(origin)
        cfg["clusters"].append({"name": "broken", "endpoints": [
            {"address": "127.0.0.1", "port": broken.port}]})
        cfg["route_tables"][0]["virtual_hosts"][0]["rules"].insert(0, {
            "matches": [{"path": {"type": "PathPrefix", "value": "/broken"}}],
            "backends": [{"cluster": "broken"}]})
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")  # success
            assert (await read_response_within(r)).status == 200
            w.close()
            r, w = await connect(p.port())
            w.write(b"GET /broken HTTP/1.1\r\nHost: a\r\n\r\n")  # the upstream resets mid-body
            await r.read()
            w.close()
            r, w = await held_post(p.port())  # the client goes away mid-request
            await until(lambda: backend(p).limits.requests == 1, "held")
            w.transport.abort()
            await all_counts_back_to_zero(p)
            bad = p.server.clusters.clusters["broken"]
            await until(lambda: bad.limits.requests == 0 and bad.endpoints[0].active == 0,
                        "broken cluster back to zero")
            assert p.metric("tulle_proxy_requests_total", response_flags="DC") == 1


async def test_a_goaway_replay_moves_to_another_endpoint_and_counts_one_retry() -> None:
    """Two HTTP/2 origins; the first answers its first connection with GOAWAY before
    processing.  The attempt layer (not the pool) replays the stream once, on the other
    endpoint, and every count is back at zero afterwards."""
    async with running_h2_origin() as (port_a, origin_a), \
            running_h2_origin() as (port_b, origin_b):
        cfg = simple_config(port_a, protocol="http2", cluster_protocol="http2")
        cfg["clusters"][0]["endpoints"].append({"address": "127.0.0.1", "port": port_b})
        origin_a.goaway_connections = 1  # round robin starts with the first endpoint
        async with running_proxy(cfg) as p:
            seen: list[tuple[int, int, str]] = []
            p.server.clusters.subscribe(lambda ep, status, flag, s: seen.append(
                (ep.port, status, flag)))
            c = await H2Client.connect(p.port())
            r = await c.request("GET", "/echo")
            assert r.status == 200
            assert (origin_a.requests, origin_b.requests) == (0, 1)  # processed once, on b
            assert seen == [(port_a, 502, "UC"), (port_b, 200, "")]  # the replay changed host
            c.close()
            assert p.metric("tulle_proxy_requests_total", response_code="200") == 1
            await all_counts_back_to_zero(p)
