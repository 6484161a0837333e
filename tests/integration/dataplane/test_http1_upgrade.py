"""Upgrade through the proxy: a real WebSocket client (websockets) against the origin's echo,
and an upgrade request the upstream declines (a normal response)."""

from __future__ import annotations

import asyncio
import json

from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import (
    EchoUpgrader,
    closed_by_peer,
    connect,
    raw_server,
    read_response,
)
from websockets.asyncio.client import connect as ws_connect


async def test_websocket_text_binary_and_close(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        async with ws_connect(f"ws://127.0.0.1:{p.port()}/ws") as ws:
            await ws.send("hello")
            assert await ws.recv() == "echo:hello"
            blob = bytes(range(256)) * 1000
            await ws.send(blob)
            assert await ws.recv() == blob
            await ws.close()
            assert ws.close_code == 1000
        for _ in range(200):
            if p.metric("tulle_proxy_downstream_connections_active") == 0 and \
                    p.metric("tulle_proxy_upstream_connections_active") == 0:
                break
            await asyncio.sleep(0.01)
        assert p.metric("tulle_proxy_downstream_connections_active") == 0
        assert p.metric("tulle_proxy_upstream_connections_active") == 0
        assert p.metric("tulle_proxy_requests_total", response_code="101") == 1


async def test_upgrade_declined_is_a_normal_response(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 200
        headers = json.loads(resp.body)["headers"]
        assert headers["upgrade"] == "foo/1"  # the upstream was asked
        assert await closed_by_peer(r)  # the parser cannot go on after an upgrade request
        w.close()


async def test_an_idle_upgrade_tunnel_is_closed_on_both_sides_and_counted() -> None:
    """After 101 the connection is an opaque relay between client and origin; one nobody
    speaks on must end after `tcp_idle_timeout_ms` like any relay (it never did: the deadline
    was cleared for good at the upgrade, so a silent client pinned an application connection
    for ever).  A tunnel that keeps moving bytes is not idle."""
    upgrader = EchoUpgrader()

    settings = {"tcp_idle_timeout_ms": 400, "header_timeout_ms": 200}
    async with raw_server(upgrader) as o, \
            running_proxy(simple_config(o.port, settings=settings)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /t HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        assert (await read_response_head(r)).startswith(b"HTTP/1.1 101 ")
        for i in range(4):  # 4 x 200 ms of traffic: longer than the idle timeout, never idle
            w.write(b"ping%d" % i)
            assert await asyncio.wait_for(r.readexactly(10), 5) == b"echo:ping%d" % i
            await asyncio.sleep(0.2)
        assert not upgrader.closed.is_set()
        # Now silence: both sides are closed within the timeout plus a sweeper tick or two.
        await asyncio.wait_for(upgrader.closed.wait(), 3)
        assert await asyncio.wait_for(r.read(), 3) == b""
        w.close()
        assert upgrader.saw == [b"ping%d" % i for i in range(4)]
        assert len(o.requests) == 1
        assert p.metric("tulle_proxy_tcp_idle_timeouts_total", listener="out") == 1
        assert p.metric("tulle_proxy_requests_total", response_code="101") == 1
        # The listener still serves.
        r, w = await connect(p.port())
        w.write(b"GET /again HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        assert (await read_response_head(r)).startswith(b"HTTP/1.1 101 ")
        w.close()


async def read_response_head(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
