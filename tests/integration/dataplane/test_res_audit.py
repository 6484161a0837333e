"""Resilience attack audit (retries, budgets, limits, health, sessions, memory): each test
fails on a defect found by sending traffic through a real proxy on 127.0.0.1, or from a
hostile upstream.  Bounded: no floods, a few hundred requests at most."""

from __future__ import annotations

import asyncio

from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import RawServer, connect, raw_server, read_response_within


async def _serve_then_close_on_reuse(srv: RawServer, r: asyncio.StreamReader,
                                     w: asyncio.StreamWriter) -> None:
    """Answer the first request on a connection; read the next one whole (the application
    acted on it) and close without an answer, as a server that crashed after the work."""
    srv.requests.append(await r.readuntil(b"\r\n\r\n"))
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await w.drain()
    srv.requests.append(await r.readuntil(b"\r\n\r\n"))


async def test_a_bodiless_post_the_upstream_read_is_not_replayed() -> None:
    """RFC 9112 9.3.1: a proxy MUST NOT automatically retry a non-idempotent request.  The
    HTTP/1 pool takes "a reused connection closed before any answer" as "never reached the
    server" and the attempt layer replays it, whatever the method."""
    async with raw_server(_serve_then_close_on_reuse) as srv, \
            running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        statuses = []
        for _ in range(2):
            w.write(b"POST /charge HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            statuses.append((await read_response_within(r)).status)
        w.close()
        charges = [h for h in srv.requests if h.startswith(b"POST /charge")]
        assert len(charges) == 2, (statuses, len(charges))  # the upstream acted twice
        assert statuses == [200, 502]


async def test_a_sidecars_own_bulkhead_refusal_is_not_retried_by_the_caller_sidecar() -> None:
    """Two hops, as in the mesh: the caller's proxy A retries 5xx (2 retries) to proxy B,
    whose cluster is at its `max_requests`.  ADR 0039: a cluster limit is never retried, "the
    limit is the answer" -- but B's 503 UO reaches A as a plain 503 and A retries it twice, so
    the refusing proxy takes 3x the requests exactly while it sheds load."""
    from tests.integration.dataplane.test_retries import retrying

    release = asyncio.Event()

    async def held(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            srv.requests.append(await r.readuntil(b"\r\n\r\n"))
            await release.wait()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with raw_server(held) as o:
        b_cfg = simple_config(o.port)
        b_cfg["clusters"][0]["limits"] = {"max_requests": 1}
        async with running_proxy(b_cfg) as b, running_proxy(retrying([b.port()])) as a:
            r0, w0 = await connect(b.port())
            w0.write(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")  # fills B's one slot
            for _ in range(300):
                if o.requests:
                    break
                await asyncio.sleep(0.01)
            assert o.requests
            r, w = await connect(a.port())
            w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            status = (await read_response_within(r)).status
            release.set()
            w.close()
            w0.close()
            assert status == 503
            refused_by_b = b.metric("tulle_proxy_upstream_overflow_total")
            retried_by_a = a.metric("tulle_proxy_upstream_retries_total")
            assert (refused_by_b, retried_by_a) == (1, 0)
