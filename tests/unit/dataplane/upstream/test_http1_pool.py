"""The HTTP/1 pool under its cluster's limits, against real loopback servers: a connection limit
makes requests wait (pending) for a connection to free up, the pending limit fails them with
503 UO, a reset waiting request leaves no dial behind, and a failure says whether it is safe to
send again.  Every test ends with the cluster's counters back where they started."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.support.proxy import free_port
from tests.support.rawservers import RawServer, one_request_per_connection, raw_server

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead, UpstreamError
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterRuntime
from tulle.dataplane.upstream.http1 import H1Pool
from tulle.dataplane.upstream.lb import EndpointState
from tulle.proxyconfig.model import Cluster, ClusterLimits, Endpoint, Settings

pytestmark = pytest.mark.both_loops


class Sink:
    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.error: UpstreamError | None = None
        self.done = asyncio.Event()
        self.on_end: Any = None

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.status = head.status

    def on_informational(self, head: ResponseHead) -> None: ...

    def on_response_data(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self, trailers: Headers | None) -> None:
        self.done.set()
        if self.on_end is not None:
            self.on_end()

    def on_read_end(self) -> None: ...

    def on_upstream_error(self, error: UpstreamError) -> None:
        self.error = error
        self.done.set()

    def on_upgraded(self, head: ResponseHead, stream: Any) -> None: ...

    def pause_request_body(self) -> None: ...

    def resume_request_body(self) -> None: ...


def get(path: bytes) -> RequestHead:
    return RequestHead(b"GET", path, b"a", b"http", [])


def runtime(port: int, limits: ClusterLimits | None = None) -> ClusterRuntime:
    cfg = Cluster(name="c", endpoints=[Endpoint(address="127.0.0.1", port=port)], limits=limits)
    return ClusterRuntime(cfg, Settings(), ProxyMetrics(), [EndpointState("127.0.0.1", port)], {})


def counts(rt: ClusterRuntime) -> tuple[int, int, int, int]:
    lim = rt.limits
    return lim.requests, lim.pending, lim.connections, rt.endpoints[0].active


async def settle(rt: ClusterRuntime, connections: int) -> None:
    """Let closes land: the connection count reaches `connections` (bounded wait)."""
    for _ in range(200):
        if rt.limits.connections == connections:
            return
        await asyncio.sleep(0.01)


async def arrived(srv: RawServer, n: int) -> None:
    for _ in range(200):
        if len(srv.requests) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(srv.requests)} requests arrived, not {n}")


async def held_until(release: asyncio.Event, srv: RawServer, r: asyncio.StreamReader,
                     w: asyncio.StreamWriter) -> None:
    """Keep-alive server: /hold answers once `release` is set, anything else at once."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        if head.startswith(b"GET /hold "):
            await release.wait()
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()


async def test_at_the_connection_limit_a_request_waits_for_the_connection_to_free_up() -> None:
    release = asyncio.Event()
    async with raw_server(lambda s, r, w: held_until(release, s, r, w)) as srv:
        rt = runtime(srv.port, ClusterLimits(max_connections=1))
        seen: list[tuple[str, int, str]] = []
        rt.on_outcome = lambda ep, status, flag, secs: seen.append((ep.key, status, flag))
        first, second = Sink(), Sink()
        assert rt.open_stream(get(b"/hold"), first, True) is not None
        assert rt.open_stream(get(b"/next"), second, True) is not None
        pool = rt.pools[rt.endpoints[0].key]
        assert isinstance(pool, H1Pool)
        assert counts(rt) == (2, 2, 1, 2)  # two waiting, one dial
        await arrived(srv, 1)  # the dial landed: the first request took it
        assert counts(rt) == (2, 1, 1, 2)
        release.set()
        await asyncio.wait_for(second.done.wait(), 5)
        assert (first.status, second.status, second.body) == (200, 200, b"ok")
        assert srv.connections == 1  # the second went on the first's connection
        assert counts(rt) == (0, 0, 1, 0)
        assert seen == [(rt.endpoints[0].key, 200, "")] * 2  # each try reported, by endpoint
        assert rt.limits.m_overflow.labels("c", "connections").value >= 1
        pool.abort()
        await settle(rt, 0)
        assert counts(rt) == (0, 0, 0, 0)


async def test_past_the_pending_limit_a_request_fails_with_503_uo() -> None:
    release = asyncio.Event()
    async with raw_server(lambda s, r, w: held_until(release, s, r, w)) as srv:
        rt = runtime(srv.port, ClusterLimits(max_connections=1, max_pending_requests=1))
        first, second, third = Sink(), Sink(), Sink()
        rt.open_stream(get(b"/hold"), first, True)  # pending while its connection is dialled
        await arrived(srv, 1)
        rt.open_stream(get(b"/next"), second, True)  # waits: the one pending place
        rt.open_stream(get(b"/over"), third, True)
        await asyncio.wait_for(third.done.wait(), 5)
        assert third.error is not None and (third.error.status, third.error.flag) == (503, "UO")
        assert rt.limits.m_overflow.labels("c", "pending").value == 1
        release.set()
        await asyncio.wait_for(second.done.wait(), 5)
        assert (first.status, second.status) == (200, 200)
        assert counts(rt)[:2] == (0, 0) and counts(rt)[3] == 0
        rt.pools[rt.endpoints[0].key].abort()
        await settle(rt, 0)


async def test_a_waiting_request_reset_at_once_leaves_no_dial_and_no_count() -> None:
    async with raw_server(lambda s, r, w: held_until(asyncio.Event(), s, r, w)) as srv:
        rt = runtime(srv.port)
        streams = [rt.open_stream(get(b"/x"), Sink(), True) for _ in range(5)]
        assert counts(rt) == (5, 5, 5, 5)
        for s in streams:
            assert s is not None
            s.reset()
        assert counts(rt) == (0, 0, 0, 0)  # the dials were cancelled with their requests
        pool = rt.pools[rt.endpoints[0].key]
        assert isinstance(pool, H1Pool) and not pool.waiting


async def test_a_closed_reused_connection_is_a_retry_safe_failure_a_fresh_one_is_not() -> None:
    async with raw_server(one_request_per_connection) as srv:
        rt = runtime(srv.port, ClusterLimits(max_retries=0))  # no replay: the failure shows
        pool = rt.pool_for(rt.endpoints[0])
        first, reused = Sink(), Sink()
        first.on_end = lambda: pool.open_stream(get(b"/again"), reused, True)  # reuses at once
        pool.open_stream(get(b"/"), first, True)
        await asyncio.wait_for(reused.done.wait(), 5)
        assert first.status == 200
        assert reused.error is not None and reused.error.flag == "UC"
        assert reused.error.retry_safe  # the server closed it as it arrived: never processed
        assert rt.limits.m_overflow.labels("c", "retries").value == 1  # the replay refused
        fresh = Sink()
        async with raw_server(_close_after_head) as closer:
            rt2 = runtime(closer.port)
            rt2.pool_for(rt2.endpoints[0]).open_stream(get(b"/"), fresh, True)
            await asyncio.wait_for(fresh.done.wait(), 5)
        assert fresh.error is not None and not fresh.error.retry_safe  # it may have acted


async def _close_after_head(srv: RawServer, r: asyncio.StreamReader,
                            w: asyncio.StreamWriter) -> None:
    await r.readuntil(b"\r\n\r\n")


async def test_the_attempt_replays_a_closed_reused_connection_on_a_new_one() -> None:
    async with raw_server(one_request_per_connection) as srv:
        rt = runtime(srv.port)
        first, reused = Sink(), Sink()
        first.on_end = lambda: rt.open_stream(get(b"/again"), reused, True)
        rt.open_stream(get(b"/"), first, True)
        await asyncio.wait_for(reused.done.wait(), 5)
        assert (reused.status, reused.error) == (200, None)
        assert srv.connections == 2 and len(srv.requests) == 3
        assert counts(rt)[:2] == (0, 0) and rt.limits.retries == 0
        rt.pools[rt.endpoints[0].key].abort()
        await settle(rt, 0)


async def test_a_connect_failure_is_503_uf_retry_safe_and_counted_out() -> None:
    rt = runtime(free_port())  # nothing listens there
    sink = Sink()
    rt.open_stream(get(b"/"), sink, True)
    await asyncio.wait_for(sink.done.wait(), 5)
    assert sink.error is not None
    assert (sink.error.status, sink.error.flag, sink.error.retry_safe) == (503, "UF", True)
    await settle(rt, 0)
    assert counts(rt) == (0, 0, 0, 0)
    assert rt.m_connect_failures.value == 1


async def test_a_request_opened_as_a_failed_dial_ends_still_gets_a_dial_of_its_own() -> None:
    """A request that arrives from the failure callback of a dial (a retry, a client's next
    request) finds that dial still counted in flight; it must get one of its own when that
    dial is counted out, not wait forever (seen with retries against a dead endpoint)."""
    rt = runtime(free_port())  # nothing listens there
    second = Sink()
    first = Sink()

    def open_another(error: UpstreamError) -> None:
        Sink.on_upstream_error(first, error)
        rt.open_stream(get(b"/2"), second, True)  # from inside the failed dial's callback

    first.on_upstream_error = open_another  # type: ignore[method-assign]
    rt.open_stream(get(b"/1"), first, True)
    await asyncio.wait_for(first.done.wait(), 5)
    await asyncio.wait_for(second.done.wait(), 5)  # hung here before the fix
    assert second.error is not None and second.error.flag == "UF"
    await settle(rt, 0)
    assert counts(rt) == (0, 0, 0, 0)
