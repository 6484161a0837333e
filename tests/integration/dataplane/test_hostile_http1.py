"""Hostile and broken HTTP/1 input from clients.

Each case: the bad connection gets the right status (or is closed), the error is counted, no
byte of a rejected request reaches the upstream, and a second client connected beside it is
served normally afterwards — one peer's bad bytes never take the listener down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import closed_by_peer, connect, read_response


@contextlib.asynccontextmanager
async def bystander(p: RunningProxy) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A keep-alive client opened before the hostile one; call it to check it is still served."""
    r, w = await connect(p.port())

    async def check() -> None:
        w.write(b"GET /echo/bystander HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 200
        assert json.loads(resp.body)["path"] == "/echo/bystander"

    try:
        yield check
    finally:
        w.close()


async def exchange(p: RunningProxy, wire: bytes) -> tuple[int, bool]:
    """Send `wire`, read one response; returns (status, closed afterwards)."""
    r, w = await connect(p.port())
    w.write(wire)
    resp = await read_response(r)
    closed = await closed_by_peer(r)
    w.close()
    return resp.status, closed


H = b"GET / HTTP/1.1\r\nHost: a\r\n"

SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "duplicate_equal_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                          b"Content-Length: 3\r\n\r\nabc",
    "obs_fold": H + b"X-A: b\r\n c\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_lf_in_headers": H + b"X-A: b\nX-B: c\r\n\r\n",
    "nul_in_value": H + b"X-A: b\x00c\r\n\r\n",
    "ctl_in_name": H + b"X\x01A: b\r\n\r\n",
    "te_chunked_gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                       b"0\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "negative_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "garbage_method": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "http09": b"GET /\r\n\r\n",
    "bad_target": b"GET ftp://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_malformed_and_smuggling_shapes_get_400_and_close(origin: int, name: str) -> None:
    async with running_proxy(simple_config(origin)) as p, bystander(p) as check:
        status, closed = await exchange(p, SMUGGLING[name])
        assert (status, closed) == (400, True)
        assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == 1
        assert p.metric("tulle_proxy_requests_total", cluster="backend") == 0
        await check()
        assert p.metric("tulle_proxy_upstream_connections_total") == 1  # the bystander's only


@pytest.mark.parametrize(("wire", "status"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 501),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
])
async def test_unsupported_framing_is_refused_before_any_upstream(origin: int, wire: bytes,
                                                                  status: int) -> None:
    async with running_proxy(simple_config(origin)) as p, bystander(p) as check:
        assert await exchange(p, wire) == (status, True)
        assert p.metric("tulle_proxy_protocol_errors_total", kind="unsupported") == 1
        assert p.metric("tulle_proxy_requests_total", cluster="backend") == 0
        await check()


SETTINGS = {"max_request_header_bytes": 4096}


@pytest.mark.parametrize("wire", [
    pytest.param(H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 60) for i in range(100)) + b"\r\n",
                 id="many_headers"),
    pytest.param(H + b"X-Big: " + b"v" * 20_000, id="giant_line_without_newline"),
    pytest.param(b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", id="long_target"),
    pytest.param(b"GET /" + b"a" * 8000, id="long_target_unfinished"),
])
async def test_oversized_heads_get_431(origin: int, wire: bytes) -> None:
    async with running_proxy(simple_config(origin, settings=SETTINGS)) as p, \
            bystander(p) as check:
        assert await exchange(p, wire) == (431, True)
        assert p.metric("tulle_proxy_protocol_errors_total", kind="header_too_large") == 1
        await check()


async def test_oversized_head_after_a_good_request_on_the_same_connection(origin: int) -> None:
    async with running_proxy(simple_config(origin, settings=SETTINGS)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 200
        w.write(H + b"X-Big: " + b"v" * 20_000)
        assert (await read_response(r)).status == 431
        assert await closed_by_peer(r)
        w.close()


async def test_slowloris_gets_408_within_the_header_timeout(origin: int) -> None:
    cfg = simple_config(origin, settings={"header_timeout_ms": 300})
    async with running_proxy(cfg) as p:
        loop = asyncio.get_running_loop()
        start = loop.time()
        r, w = await connect(p.port())
        w.write(b"GET / HTTP/1.1\r\n")
        resp_task = asyncio.ensure_future(read_response(r))
        for _ in range(100):  # a byte every 20 ms: the head never completes
            if resp_task.done():
                break
            w.write(b"X")
            await asyncio.sleep(0.02)
        resp = await resp_task
        elapsed = loop.time() - start
        assert resp.status == 408
        assert await closed_by_peer(r)
        w.close()
        assert elapsed >= 0.3
        assert elapsed < 3.0, "the header timeout did not fire in time"
        assert p.metric("tulle_proxy_protocol_errors_total", kind="header_timeout") == 1
        # (A bystander idle this long is closed by the same timeout; a new client is served.)
        async with bystander(p) as check:
            await check()


async def test_silent_connection_is_closed_without_a_response(origin: int) -> None:
    cfg = simple_config(origin, settings={"header_timeout_ms": 200})
    async with running_proxy(cfg) as p:
        r, w = await connect(p.port())
        assert await r.read() == b""
        w.close()
        assert p.metric("tulle_proxy_protocol_errors_total") == 0


async def test_bad_chunk_mid_body_resets_the_upstream_and_answers_400(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p, bystander(p) as check:
        r, w = await connect(p.port())
        w.write(b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n")
        await asyncio.sleep(0.05)  # the request is on its way upstream
        w.write(b"zz\r\nnot hex\r\n")
        resp = await read_response(r)
        assert resp.status == 400
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_requests_total", response_code="400",
                        response_flags="DPE") == 1
        await check()


async def test_bad_bytes_after_a_good_pipelined_request(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 200 and resp.body == b"late\n"
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == 1
