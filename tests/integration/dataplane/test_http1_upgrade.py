"""Upgrade through the proxy: a real WebSocket client (websockets) against the origin's echo,
and an upgrade request the upstream declines (a normal response)."""

from __future__ import annotations

import asyncio
import json

from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import closed_by_peer, connect, read_response
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
