"""A retried 5xx keeps its upstream connection: the bug `tulle demo` found (the flaky service,
30% 503s and a RetryPolicy on its callers, took ~400 inbound connections for ~1,000 requests).

A response the router retries past is still a complete HTTP exchange: when its body has run to
its end, the keep-alive connection goes back to the pool whatever the status.  One whose body
is still coming, or that says `connection: close`, is not reused.  Each test counts the
connections the real origin accepted behind a real proxy."""

from __future__ import annotations

from tests.integration.dataplane.test_retries import retrying
from tests.support.flaky import flaky_origin
from tests.support.h2peers import running_h2_origin
from tests.support.proxy import running_proxy
from tests.support.rawservers import connect, read_response_within

N = 60


async def keep_alive_gets(port: int, n: int, path: bytes = b"/x") -> list[int]:
    """`n` GETs one after another on one keep-alive client connection; the statuses."""
    r, w = await connect(port)
    statuses = []
    try:
        for _ in range(n):
            w.write(b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % path)
            resp = await read_response_within(r, 5.0)
            statuses.append(resp.status)
    finally:
        w.close()
    return statuses


async def test_http1_pool_keeps_the_connection_of_a_retried_503() -> None:
    script = ["503" if i % 3 == 0 else "ok" for i in range(2 * N)]  # a third of the tries
    async with flaky_origin(script) as o, running_proxy(retrying([o.port])) as p:
        assert await keep_alive_gets(p.port(), N) == [200] * N
        assert p.metric("tulle_proxy_upstream_retries_total", reason="503") >= N // 3
        assert o.connections == 1, o.connections


async def test_http1_retried_503_with_connection_close_is_not_reused() -> None:
    async with flaky_origin(["503-close", "ok", "503-close", "ok"]) as o, \
            running_proxy(retrying([o.port])) as p:
        assert await keep_alive_gets(p.port(), 2) == [200, 200]
        assert len(o.seen) == 4
        assert o.connections == 3  # the two 503s each closed theirs; the 200s reuse


async def test_http1_retried_503_with_a_body_still_coming_is_not_reused() -> None:
    """A 256 KiB 503 body spans reads: the proxy does not wait for it; the connection goes,
    and the next request is not confused by the rest of that body."""
    async with flaky_origin(["503-big", "ok", "ok"]) as o, \
            running_proxy(retrying([o.port])) as p:
        assert await keep_alive_gets(p.port(), 2) == [200, 200]
        assert len(o.seen) == 3
        assert o.connections == 2


async def test_http2_pool_keeps_the_connection_of_a_retried_503() -> None:
    async with running_h2_origin() as (port, origin):
        origin.script = ["503" if i % 3 == 0 else "ok" for i in range(2 * N)]
        cfg = retrying([port])
        cfg["clusters"][0]["protocol"] = "http2"
        async with running_proxy(cfg) as p:
            assert await keep_alive_gets(p.port(), N, b"/script") == [200] * N
            assert p.metric("tulle_proxy_upstream_retries_total", reason="503") >= N // 3
            assert origin.connections == 1, origin.connections


async def test_a_retried_503_whose_body_stalls_closes_its_connection_and_the_retry_answers(
        ) -> None:
    """Hostile upstream: a 503 head and 10 of 1,000 body bytes, then silence.  The proxy does
    not wait for the rest: the retry answers at once, and the stalled connection is gone (not
    held busy, not handed to the next request)."""
    async with flaky_origin(["503-stall", "ok", "ok"]) as o, \
            running_proxy(retrying([o.port])) as p:
        assert await keep_alive_gets(p.port(), 2) == [200, 200]
        assert o.connections == 2
        # the stalled one was closed: one upstream connection open, the reused one
        assert p.metric("tulle_proxy_upstream_connections_active", cluster="backend") == 1


async def test_bytes_after_a_retried_503_are_never_read_as_the_next_answer() -> None:
    """Hostile upstream: a 503 followed, in the same write, by a 200 nobody asked for.  That
    connection is closed (bytes after a response are a protocol error): the retry and the
    next request get real answers from a new connection."""
    async with flaky_origin(["503-junk", "ok", "ok"]) as o, \
            running_proxy(retrying([o.port])) as p:
        r, w = await connect(p.port())
        try:
            for _ in range(2):
                w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = await read_response_within(r, 5.0)
                assert (resp.status, resp.body) == (200, b"origin\n")
        finally:
            w.close()
        assert len(o.seen) == 3 and o.connections == 2


async def test_retried_503s_count_toward_outlier_ejection() -> None:
    """The dropped try reports its 503 (not the downstream's `DC`, which outlier detection
    ignores): an endpoint answering only 503s behind a retry policy is ejected by
    consecutive_5xx, while every client still gets a 200 from the other endpoint."""
    async with flaky_origin(default="503", name=b"bad") as bad, \
            flaky_origin(name=b"good") as good:
        cfg = retrying([bad.port, good.port])
        cfg["clusters"][0]["outlier_detection"] = {"consecutive_5xx": 3}
        cfg["clusters"][0]["lb_policy"] = "round_robin"
        async with running_proxy(cfg) as p:
            assert await keep_alive_gets(p.port(), 20) == [200] * 20
            assert p.metric("tulle_proxy_upstream_ejections_total", cluster="backend",
                            reason="consecutive_5xx") == 1
            assert len(bad.seen) == 3  # ejected after its third 503; none after
