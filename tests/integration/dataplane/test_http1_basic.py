"""HTTP/1.1 through one proxy: the basic exchange, routing misses, forwarding headers."""

from __future__ import annotations

import aiohttp
from tests.support.proxy import running_proxy, simple_config


async def test_get_is_proxied_with_forwarding_headers(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p, aiohttp.ClientSession() as s, \
            s.get(p.url(path="/echo?x=1"), headers={"Connection": "keep-alive"}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["path"] == "/echo?x=1"
    assert body["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert body["headers"]["x-forwarded-proto"] == "http"
    assert len(body["headers"]["x-request-id"]) == 36
    assert p.metric("tulle_proxy_requests_total", response_code="200") == 1


async def test_no_route_is_404_with_a_clear_body(origin: int) -> None:
    cfg = simple_config(origin)
    cfg["route_tables"][0]["virtual_hosts"][0]["domains"] = ["only.example"]
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s, s.get(p.url(path="/x")) as r:
        assert r.status == 404
        assert "no route for host" in await r.text()
