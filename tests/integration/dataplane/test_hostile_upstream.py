"""Upstreams and clients that fail mid-exchange: what the client sees, what is counted, and that
nothing leaks (connection gauges return to zero)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from tests.support.proxy import RunningProxy, free_port, running_proxy, simple_config
from tests.support.rawservers import (
    close_delimited_then_reset,
    closed_by_peer,
    connect,
    extra_bytes_after_response,
    garbage,
    half_then_reset,
    one_request_per_connection,
    raw_server,
    read_response,
    reset_before_head,
    switching_without_upgrade,
)

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def pooled(p: RunningProxy) -> int:
    """Upstream connections idle in pools (kept on purpose, not leaked)."""
    return sum(len(pool.idle) for c in p.server.clusters.clusters.values()  # type: ignore[attr-defined]
               for pool in c.pools.values())


async def settled(p: RunningProxy) -> None:
    """Wait (bounded) until every downstream connection is gone and every upstream one that is
    left is idle in its pool."""
    for _ in range(200):
        if (p.metric("tulle_proxy_downstream_connections_active") == 0
                and p.metric("tulle_proxy_upstream_connections_active") == pooled(p)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("connections leaked: "
                         f"down={p.metric('tulle_proxy_downstream_connections_active')} "
                         f"up={p.metric('tulle_proxy_upstream_connections_active')}")


async def one(p: RunningProxy, wire: bytes = GET) -> int:
    r, w = await connect(p.port())
    w.write(wire)
    resp = await read_response(r)
    w.close()
    return resp.status


async def test_connect_failure_is_503_uf() -> None:
    async with running_proxy(simple_config(free_port())) as p:
        assert await one(p) == 503
        assert p.metric("tulle_proxy_requests_total", response_code="503",
                        response_flags="UF") == 1
        assert p.metric("tulle_proxy_upstream_connect_failures_total") == 1
        await settled(p)


async def test_upstream_timeout_is_504_ut(origin: int) -> None:
    cfg = simple_config(origin)
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["timeout_ms"] = 200
    async with running_proxy(cfg) as p:
        assert await one(p, b"GET /delay/3000 HTTP/1.1\r\nHost: a\r\n\r\n") == 504
        assert await one(p, b"GET /delay/10 HTTP/1.1\r\nHost: a\r\n\r\n") == 200
        assert p.metric("tulle_proxy_requests_total", response_code="504",
                        response_flags="UT") == 1
        await settled(p)


async def test_long_route_timeout_is_enforced_by_the_deadline_sweeper(origin: int) -> None:
    # header_timeout 100 ms: the sweeper ticks every 25 ms and takes route timeouts from
    # 250 ms on (ADR 0010).  Two pipelined requests: the second's head arrives while the first
    # is in flight and must not clear the first's deadline; then the second gets its own.
    cfg = simple_config(origin, settings={"header_timeout_ms": 100})
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["timeout_ms"] = 300
    slow = b"GET /delay/5000 HTTP/1.1\r\nHost: a\r\n\r\n"
    async with running_proxy(cfg) as p:
        r, w = await connect(p.port())
        w.write(slow + slow)
        first = await asyncio.wait_for(read_response(r), 3)
        second = await asyncio.wait_for(read_response(r), 3)
        assert (first.status, second.status) == (504, 504)
        w.close()
        assert p.metric("tulle_proxy_requests_total", response_code="504",
                        response_flags="UT") == 2
        await settled(p)


async def test_reset_after_the_head_aborts_the_client() -> None:
    async with raw_server(half_then_reset) as srv, running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(GET)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await read_response(r)  # head 200 + 1000 of 100000 bytes, then the connection dies
        w.close()
        assert p.metric("tulle_proxy_requests_total", response_code="200",
                        response_flags="UC") == 1
        await settled(p)


@pytest.mark.parametrize(("handler", "flag"), [(reset_before_head, "UC"), (garbage, "UPE"),
                                               (switching_without_upgrade, "UPE")])
async def test_failure_before_the_head_is_502(handler: object, flag: str) -> None:
    async with raw_server(handler) as srv, running_proxy(simple_config(srv.port)) as p:  # type: ignore[arg-type]
        assert await one(p) == 502
        assert p.metric("tulle_proxy_requests_total", response_code="502",
                        response_flags=flag) == 1
        await settled(p)


async def test_close_delimited_body_cut_by_a_reset_is_not_complete() -> None:
    async with raw_server(close_delimited_then_reset) as srv, \
            running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(GET)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await read_response(r)  # chunked, never the last chunk
        w.close()
        await settled(p)


async def test_bytes_after_a_response_never_reach_the_next_request() -> None:
    async with raw_server(extra_bytes_after_response) as srv, \
            running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(GET)
        assert (await read_response(r)).body == b"first"
        w.write(GET)
        assert (await read_response(r)).body == b"first"  # not b"smuggled"
        assert srv.connections == 2
        w.close()
        await settled(p)


async def test_reused_connection_closed_by_the_server_is_retried_once() -> None:
    async with raw_server(one_request_per_connection) as srv, \
            running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        for _ in range(3):
            w.write(GET)
            resp = await read_response(r)
            assert (resp.status, resp.body) == (200, b"ok")
        w.close()
        # Each reuse met a close and was replayed on a fresh connection: 5 heads, 3 connections.
        assert (len(srv.requests), srv.connections) == (5, 3)
        assert p.metric("tulle_proxy_requests_total", response_code="502") == 0
        await settled(p)


def _rst(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def test_client_reset_mid_upload_resets_the_upstream(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n")
        for _ in range(20):
            w.write(b"x" * 65536)
            await w.drain()
        for _ in range(200):  # the upload is flowing upstream
            if p.metric("tulle_proxy_upstream_connections_active") == 1:
                break
            await asyncio.sleep(0.01)
        _rst(w)
        await settled(p)
        assert p.metric("tulle_proxy_requests_total", response_flags="DC") == 1


async def test_half_close_after_a_complete_request_still_gets_the_response(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\n")
        w.write_eof()
        resp = await read_response(r)
        assert (resp.status, resp.body) == (200, b"late\n")
        assert await closed_by_peer(r)
        w.close()
        await settled(p)


async def test_half_close_mid_head_is_cleaned_up(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /echo HTTP/1.1\r\nHo")
        w.write_eof()
        assert await closed_by_peer(r)
        w.close()
        await settled(p)
        assert p.metric("tulle_proxy_requests_total") == 0
