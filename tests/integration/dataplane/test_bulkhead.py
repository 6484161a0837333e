"""Issue 10's scenario "a cluster is flooded past its limits": through a real proxy with two
clusters, the flooded one answers every request past its `max_requests` at once with 503 and
flag `UO`, while the other cluster on the same proxy (and listener) keeps serving every request.

The flooded cluster's origin holds each request until the test releases it, so the limit is
reached deterministically (no timing); `bench/bulkhead.py` runs the same at 20,000 requests
with a slow origin in a separate proxy process."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.killable import drive, killable_origins
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import RawServer, raw_server, read_response_within

LIMIT = 4


def two_clusters(other: int, flood: int) -> dict[str, Any]:
    cfg = simple_config(other)
    cfg["clusters"].append({"name": "flood", "limits": {"max_requests": LIMIT},
                            "endpoints": [{"address": "127.0.0.1", "port": flood}]})
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"].insert(0, {
        "matches": [{"path": {"type": "PathPrefix", "value": "/flood"}}],
        "backends": [{"cluster": "flood"}]})
    return cfg


async def until(cond: Any, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def flood_clients(p: RunningProxy, clients: int, each: int) -> list[tuple[int, bytes]]:
    """`clients` keep-alive connections sending `each` GETs to the flooded cluster."""
    out: list[tuple[int, bytes]] = []

    async def one() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        for _ in range(each):
            w.write(b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await read_response_within(r)
            out.append((resp.status, resp.body))
        w.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return out


async def test_a_flooded_cluster_fails_fast_with_uo_and_the_other_keeps_serving() -> None:
    release = asyncio.Event()

    async def held(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            srv.requests.append(await r.readuntil(b"\r\n\r\n"))
            await release.wait()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")

    async with killable_origins(1) as (fast,), raw_server(held) as slow, running_proxy(
            two_clusters(fast.port, slow.port)) as p:
        flood = p.server.clusters.clusters["flood"]
        holders = asyncio.ensure_future(flood_clients(p, LIMIT, 1))
        await until(lambda: len(slow.requests) == LIMIT, "the limit's worth held upstream")
        assert flood.limits.requests == LIMIT

        over, other = await asyncio.gather(flood_clients(p, 16, 10), drive(p.port(), 400, 8))

        assert [s for s, _ in over] == [503] * 160
        assert all(b"limit of 4 requests" in body for _, body in over)
        assert other == {200: 400}  # every request to the other cluster served
        assert len(slow.requests) == LIMIT  # nothing past the limit reached the flooded origin
        release.set()
        assert [s for s, _ in await holders] == [200] * LIMIT
        assert p.metric("tulle_proxy_requests_total", cluster="flood", response_code="503",
                        response_flags="UO") == 160
        assert p.metric("tulle_proxy_upstream_overflow_total", cluster="flood",
                        limit="requests") == 160
        assert p.metric("tulle_proxy_upstream_overflow_total", cluster="backend") == 0
        assert p.metric("tulle_proxy_requests_total", cluster="backend",
                        response_code="200") == 400
        await until(lambda: (flood.limits.requests, flood.limits.pending) == (0, 0),
                    "the flooded cluster's counts back to zero")
