"""Attempts, scripted: a real `ClusterRuntime` (limits, balancer, attempt) over a scripted pool
that records what the attempt asks of it and lets the test play the pool's side.

Each test reads as an exchange: open, the pool answers (or fails, or the downstream resets),
then what the downstream saw and what was counted: endpoint in-flight counts, the cluster's
request/retry counters, the outcome hook, the latency EWMA."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tulle.dataplane.exchange import (
    Headers,
    RequestHead,
    ResponseHead,
    UpstreamError,
    connect_failure,
)
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream import cluster as cluster_mod
from tulle.dataplane.upstream.attempt import Attempt, AttemptRequest, Refused
from tulle.dataplane.upstream.cluster import ClusterRuntime
from tulle.dataplane.upstream.lb import EndpointState, Rendezvous
from tulle.proxyconfig.model import Cluster, ClusterLimits, Endpoint, Settings


class PoolStream:
    def __init__(self, pool: ScriptedPool, head: RequestHead, sink: Any,
                 end_stream: bool) -> None:
        self.pool = pool
        self.head = head
        self.sink = self.down = sink
        self.end_stream = end_stream
        self.calls: list[tuple[str, Any]] = []

    def send_data(self, data: bytes) -> None:
        self.calls.append(("data", data))

    def send_end(self, trailers: Headers | None = None) -> None:
        self.calls.append(("end", trailers))

    def reset(self) -> None:
        self.calls.append(("reset", None))

    def pause_response(self) -> None:
        self.calls.append(("pause", None))

    def resume_response(self) -> None:
        self.calls.append(("resume", None))

    def send_eof(self) -> None:
        self.calls.append(("eof", None))


class ScriptedPool:
    refuse: UpstreamError | None = None
    """Raised by the next open_stream (a pool's pending limit)."""

    def __init__(self, cluster: ClusterRuntime, ep: EndpointState) -> None:
        self.cluster = cluster
        self.ep = ep
        self.streams: list[PoolStream] = []

    def open_stream(self, head: RequestHead, sink: Any, end_stream: bool) -> PoolStream:
        if ScriptedPool.refuse is not None:
            raise ScriptedPool.refuse
        s = PoolStream(self, head, sink, end_stream)
        self.streams.append(s)
        return s

    def sweep(self, now: float, idle_timeout: float) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.failed = asyncio.Event()

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.events.append(("head", head.status))

    def on_informational(self, head: ResponseHead) -> None:
        self.events.append(("1xx", head.status))

    def on_response_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def on_response_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def on_read_end(self) -> None:
        pass

    def on_upstream_error(self, error: UpstreamError) -> None:
        self.events.append(("error", (error.status, error.flag)))
        self.failed.set()

    def on_upgraded(self, head: ResponseHead, stream: Any) -> None:
        self.events.append(("upgraded", stream))

    def pause_request_body(self) -> None: ...

    def resume_request_body(self) -> None: ...


HEAD = RequestHead(b"GET", b"/", b"a", b"http", [])


@pytest.fixture(autouse=True)
def scripted_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cluster_mod.POOL_FACTORIES, "http1", ScriptedPool)
    ScriptedPool.refuse = None


def runtime(*ports: int, limits: ClusterLimits | None = None) -> ClusterRuntime:
    cfg = Cluster(name="c", endpoints=[Endpoint(address="127.0.0.1", port=p) for p in ports],
                  limits=limits)
    eps = [EndpointState("127.0.0.1", p) for p in ports]
    rt = ClusterRuntime(cfg, Settings(), ProxyMetrics(), eps, {})
    rt.on_outcome = lambda ep, status, flag, secs: outcomes.append((ep.port, status, flag))
    outcomes.clear()
    return rt


outcomes: list[tuple[int, int, str]] = []


def pool_stream(rt: ClusterRuntime, port: int, i: int = -1) -> PoolStream:
    pool = rt.pools[f"127.0.0.1:{port}"]
    assert isinstance(pool, ScriptedPool)
    return pool.streams[i]


def in_flight(rt: ClusterRuntime) -> list[int]:
    return [e.active for e in rt.endpoints] + [rt.limits.requests, rt.limits.retries]


async def test_a_response_is_counted_in_flight_until_its_end_and_reported() -> None:
    rt = runtime(1)
    sink = Sink()
    a = rt.open_stream(HEAD, sink, True)
    assert isinstance(a, Attempt)
    assert in_flight(rt) == [1, 1, 0]
    up = pool_stream(rt, 1)
    a.start -= 0.1  # as if the head took 100 ms
    a.on_response_head(ResponseHead(200, []), False)
    a.on_response_data(b"ok")
    assert in_flight(rt) == [1, 1, 0] and outcomes == []
    a.on_response_end(None)
    assert in_flight(rt) == [0, 0, 0]
    assert outcomes == [(1, 200, "")]
    assert sink.events == [("head", 200), ("data", b"ok"), ("end", None)]
    assert rt.endpoints[0].ewma == pytest.approx(0.03, abs=0.01)  # 0.3 of the first sample
    assert up.calls == []  # nothing forwarded that the driver did not ask for
    assert up.down is sink  # body bytes go past the attempt, straight downstream


async def test_a_bodiless_head_ends_the_try() -> None:
    rt = runtime(1)
    a = rt.open_stream(HEAD, Sink(), True)
    assert a is not None
    a.on_response_head(ResponseHead(204, []), True)  # type: ignore[attr-defined]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 204, "")]


async def test_a_failure_is_delivered_counted_out_and_reported_with_its_flag() -> None:
    rt = runtime(1)
    sink = Sink()
    a = rt.open_stream(HEAD, sink, True)
    assert isinstance(a, Attempt)
    a.on_upstream_error(UpstreamError(502, "UPE", "bad bytes"))
    assert sink.events == [("error", (502, "UPE"))]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 502, "UPE")]


async def test_a_downstream_reset_resets_the_pool_stream_and_counts_out_once() -> None:
    rt = runtime(1)
    a = rt.open_stream(HEAD, Sink(), False)
    assert a is not None
    a.send_data(b"body")
    a.reset()
    a.reset()
    assert pool_stream(rt, 1).calls == [("data", b"body"), ("reset", None)]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 0, "DC")]


async def test_the_per_try_deadline_resets_the_try_and_answers_504_ut() -> None:
    rt = runtime(1)
    sink = Sink()
    a = rt.open_stream(HEAD, sink, True, AttemptRequest(per_try_timeout=0.01))
    assert a is not None
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (504, "UT"))]
    assert pool_stream(rt, 1).calls == [("reset", None)]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 504, "UT")]


async def test_a_reuse_race_is_replayed_once_on_another_endpoint() -> None:
    rt = runtime(1, 2)
    sink = Sink()
    a = rt.open_stream(HEAD, sink, False)
    assert isinstance(a, Attempt)
    first = a.ep.port
    a.send_end([(b"x-t", b"1")])  # no body, trailers only: still nothing of it left
    a.pause_response()
    a.on_upstream_error(UpstreamError(502, "UC", "closed", retry_safe=True))
    assert sink.events == []  # the client sees nothing of it
    second = 2 if first == 1 else 1
    assert a.ep.port == second
    replay = pool_stream(rt, second)
    assert replay.calls == [("end", [(b"x-t", b"1")]), ("pause", None)]
    assert sorted(in_flight(rt)[:2]) == [0, 1] and rt.limits.retries == 1
    assert outcomes == [(first, 502, "UC")]
    # A second race is not replayed again.
    a.on_upstream_error(UpstreamError(502, "UC", "closed again", retry_safe=True))
    assert sink.events == [("error", (502, "UC"))]
    assert in_flight(rt) == [0, 0, 0, 0]


@pytest.mark.parametrize("case", ["body_sent", "connect_failure", "not_safe", "no_retries"])
async def test_what_is_not_replayed(case: str) -> None:
    rt = runtime(1, 2, limits=ClusterLimits(max_retries=0) if case == "no_retries" else None)
    sink = Sink()
    a = rt.open_stream(HEAD, sink, False)
    assert isinstance(a, Attempt)
    if case == "body_sent":
        a.send_data(b"x")
    err = {"connect_failure": connect_failure("refused"),
           "not_safe": UpstreamError(502, "UC", "reset")}.get(
        case, UpstreamError(502, "UC", "closed", retry_safe=True))
    a.on_upstream_error(err)
    assert sink.events == [("error", (err.status, err.flag))]
    assert in_flight(rt) == [0, 0, 0, 0]
    if case == "no_retries":
        assert rt.limits.m_overflow.labels("c", "retries").value == 1


async def test_past_max_requests_the_try_is_refused_with_503_uo_from_the_loop() -> None:
    rt = runtime(1, limits=ClusterLimits(max_requests=1))
    held = rt.open_stream(HEAD, Sink(), True)
    sink, gone = Sink(), Sink()
    refused = rt.open_stream(HEAD, sink, True)
    reset_first = rt.open_stream(HEAD, gone, True)
    assert isinstance(refused, Refused) and isinstance(reset_first, Refused)
    assert sink.events == []  # never from inside open_stream
    reset_first.reset()
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (503, "UO"))]
    assert gone.events == []
    assert in_flight(rt) == [1, 1, 0]  # only the held one
    assert rt.limits.m_overflow.labels("c", "requests").value == 2
    assert held is not None
    held.reset()
    assert in_flight(rt) == [0, 0, 0]


async def test_a_retry_past_max_retries_is_refused() -> None:
    rt = runtime(1, limits=ClusterLimits(max_retries=1))
    first = rt.open_stream(HEAD, Sink(), True, AttemptRequest(retry=True))
    assert isinstance(first, Attempt) and rt.limits.retries == 1
    sink = Sink()
    assert isinstance(rt.open_stream(HEAD, sink, True, AttemptRequest(retry=True)), Refused)
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (503, "UO"))]
    first.on_response_head(ResponseHead(200, []), True)
    assert in_flight(rt) == [0, 0, 0]


async def test_a_pools_pending_overflow_fails_the_try_from_the_loop() -> None:
    rt = runtime(1)
    ScriptedPool.refuse = rt.limits.overflow("pending")
    sink = Sink()
    a = rt.open_stream(HEAD, sink, True)
    assert isinstance(a, Attempt) and sink.events == []
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (503, "UO"))]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 503, "UO")]


async def test_a_tunnel_stays_in_flight_until_closed() -> None:
    rt = runtime(1)
    sink = Sink()
    a = rt.open_stream(HEAD, sink, False)
    assert isinstance(a, Attempt)
    up = pool_stream(rt, 1)
    a.on_upgraded(ResponseHead(101, []), up)  # type: ignore[arg-type]
    assert sink.events == [("upgraded", a)]  # the driver talks to the attempt
    a.send_data(b"ws")
    a.on_response_end(None)  # the upstream half-closed: the tunnel may still carry bytes
    a.send_data(b"more")
    a.send_eof()
    a.close()
    assert up.calls == [("data", b"ws"), ("data", b"more"), ("eof", None), ("reset", None)]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 101, "")]


async def test_the_hash_key_and_avoid_reach_the_balancer() -> None:
    rt = runtime(1, 2, 3)
    rt.lb = Rendezvous(rt.endpoints)
    picks = set()
    for _ in range(5):
        a = rt.open_stream(HEAD, Sink(), True, AttemptRequest(hash_key=42))
        assert isinstance(a, Attempt)
        picks.add(a.ep.port)
        a.reset()
    assert len(picks) == 1
    (port,) = picks
    other = rt.open_stream(HEAD, Sink(), True,
                           AttemptRequest(hash_key=42, avoid=(rt.endpoints[port - 1],)))
    assert isinstance(other, Attempt) and other.ep.port != port
