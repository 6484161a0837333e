"""Attempts, scripted: a real `ClusterRuntime` (limits, balancer) over a scripted pool whose
streams are real `Attempt`s, the test playing the pool's side (head, end, failure) the way the
HTTP/1 and HTTP/2 pools do.

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
from tulle.dataplane.upstream.attempt import Attempt, AttemptRequest, Refused, now
from tulle.dataplane.upstream.cluster import ClusterRuntime
from tulle.dataplane.upstream.lb import EndpointState, Rendezvous
from tulle.proxyconfig.model import Cluster, ClusterLimits, Endpoint, Settings


class ScriptedStream(Attempt):
    """A pool stream that does what the pools do for the attempt, and records the rest."""

    __slots__ = ("calls",)  # `pool` and `sink` are the base's

    def __init__(self, pool: ScriptedPool, sink: Any) -> None:
        self.pool = pool
        self.sink = sink
        self.calls: list[str] = []
        pool.limits.requests += 1
        pool.endpoint.active += 1
        self.status = 0
        self.try_done = False
        self.opts = None
        self.start = now()

    # the downstream's side (UpstreamStream)
    def send_data(self, data: bytes) -> None:
        self.calls.append("data")

    def send_end(self, trailers: Headers | None = None) -> None:
        self.calls.append("end")

    def reset(self) -> None:
        self.calls.append("reset")
        self._over(self.status, "DC")

    def pause_response(self) -> None: ...

    def resume_response(self) -> None: ...

    # the pool's side, played by the test
    def respond(self, status: int, end_stream: bool = False) -> None:
        self._head(status)
        if end_stream:
            self._over(status, "")
        self.sink.on_response_head(ResponseHead(status, []), end_stream)

    def end(self) -> None:
        self._over(self.status, "")
        self.sink.on_response_end(None)

    def _rehome(self, pool: ScriptedPool) -> None:
        self.pool = pool
        pool.adopted.append(self)


class ScriptedPool:
    refuse: UpstreamError | None = None
    """Raised by the next open_stream (a pool's pending limit)."""

    def __init__(self, cluster: ClusterRuntime, ep: EndpointState) -> None:
        self.cluster = cluster
        self.endpoint = ep
        self.limits = cluster.limits
        self.streams: list[ScriptedStream] = []
        self.adopted: list[ScriptedStream] = []

    def open_stream(self, head: RequestHead, sink: Any, end_stream: bool) -> ScriptedStream:
        if ScriptedPool.refuse is not None:
            raise ScriptedPool.refuse
        s = ScriptedStream(self, sink)
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

    def on_response_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))

    def on_upstream_error(self, error: UpstreamError) -> None:
        self.events.append(("error", (error.status, error.flag)))
        self.failed.set()


HEAD = RequestHead(b"GET", b"/", b"a", b"http", [])
outcomes: list[tuple[int, int, str]] = []


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


def opened(rt: ClusterRuntime, sink: Sink, request: AttemptRequest | None = None
           ) -> ScriptedStream:
    s = rt.open_stream(HEAD, sink, True, request)
    assert isinstance(s, ScriptedStream)
    return s


def in_flight(rt: ClusterRuntime) -> list[int]:
    return [e.active for e in rt.endpoints] + [rt.limits.requests, rt.limits.retries]


async def test_a_response_is_counted_in_flight_until_its_end_and_reported() -> None:
    rt = runtime(1)
    sink = Sink()
    s = opened(rt, sink)
    assert in_flight(rt) == [1, 1, 0]
    s.start -= 0.1  # as if the head took 100 ms
    s.respond(200)
    assert in_flight(rt) == [1, 1, 0] and outcomes == []
    s.end()
    s.reset()  # after the end: nothing more is counted or reported
    assert in_flight(rt) == [0, 0, 0]
    assert outcomes == [(1, 200, "")]
    assert sink.events == [("head", 200), ("end", None)]
    assert rt.endpoints[0].ewma == pytest.approx(0.1, abs=0.01)  # peak: the first sample


async def test_a_bodiless_head_ends_the_try() -> None:
    rt = runtime(1)
    opened(rt, Sink()).respond(204, end_stream=True)
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 204, "")]


async def test_a_failure_is_delivered_counted_out_and_reported_with_its_flag() -> None:
    rt = runtime(1)
    sink = Sink()
    opened(rt, sink)._failed(UpstreamError(502, "UPE", "bad bytes"))
    assert sink.events == [("error", (502, "UPE"))]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 502, "UPE")]


async def test_a_downstream_reset_counts_out_once_as_dc() -> None:
    rt = runtime(1)
    s = opened(rt, Sink())
    s.respond(200)
    s.reset()
    s.reset()
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 200, "DC")]


async def test_the_per_try_deadline_resets_the_try_and_answers_504_ut() -> None:
    rt = runtime(1)
    sink = Sink()
    s = opened(rt, sink, AttemptRequest(per_try_timeout=0.01))
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (504, "UT"))]
    assert s.calls == ["reset"]
    assert in_flight(rt) == [0, 0, 0] and outcomes == [(1, 504, "UT")]  # not also DC


async def test_a_reuse_race_is_replayed_once_on_another_endpoint() -> None:
    rt = runtime(1, 2)
    sink = Sink()
    s = opened(rt, sink)
    first = s.pool.endpoint.port
    second = 2 if first == 1 else 1
    s._failed(UpstreamError(502, "UC", "closed", retry_safe=True))
    assert sink.events == []  # the client sees nothing of it
    assert s.pool.endpoint.port == second and s.pool.adopted == [s]
    assert [e.active for e in rt.endpoints if e.port == second] == [1]
    assert rt.limits.requests == 1 and rt.limits.retries == 1
    assert outcomes == [(first, 502, "UC")]
    s._failed(UpstreamError(502, "UC", "closed again", retry_safe=True))  # not replayed again
    assert sink.events == [("error", (502, "UC"))]
    assert in_flight(rt) == [0, 0, 0, 0]


@pytest.mark.parametrize("case", ["connect_failure", "not_safe", "after_head", "no_retries"])
async def test_what_is_not_replayed(case: str) -> None:
    rt = runtime(1, 2, limits=ClusterLimits(max_retries=0) if case == "no_retries" else None)
    sink = Sink()
    s = opened(rt, sink)
    if case == "after_head":
        s.respond(200)
    err = {"connect_failure": connect_failure("refused"),
           "not_safe": UpstreamError(502, "UC", "reset")}.get(
        case, UpstreamError(502, "UC", "closed", retry_safe=True))
    s._failed(err)
    assert sink.events[-1] == ("error", (err.status, err.flag))
    assert in_flight(rt) == [0, 0, 0, 0]
    assert not any(p.adopted for p in rt.pools.values())  # type: ignore[attr-defined]
    if case == "no_retries":
        assert rt.limits.m_overflow.labels("c", "retries").value == 1


async def test_past_max_requests_the_try_is_refused_with_503_uo_from_the_loop() -> None:
    rt = runtime(1, limits=ClusterLimits(max_requests=1))
    held = opened(rt, Sink())
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
    held.reset()
    assert in_flight(rt) == [0, 0, 0]


async def test_a_retry_past_max_retries_is_refused() -> None:
    rt = runtime(1, limits=ClusterLimits(max_retries=1))
    first = opened(rt, Sink(), AttemptRequest(retry=True))
    assert rt.limits.retries == 1
    sink = Sink()
    assert isinstance(rt.open_stream(HEAD, sink, True, AttemptRequest(retry=True)), Refused)
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (503, "UO"))]
    first.respond(200, end_stream=True)
    assert in_flight(rt) == [0, 0, 0]


async def test_a_pools_pending_overflow_is_refused_from_the_loop() -> None:
    rt = runtime(1)
    ScriptedPool.refuse = rt.limits.overflow("pending")
    sink = Sink()
    assert isinstance(rt.open_stream(HEAD, sink, True), Refused) and sink.events == []
    await asyncio.wait_for(sink.failed.wait(), 5)
    assert sink.events == [("error", (503, "UO"))]
    assert in_flight(rt) == [0, 0, 0]


async def test_the_hash_key_and_avoid_reach_the_balancer() -> None:
    rt = runtime(1, 2, 3)
    rt.lb = Rendezvous(rt.endpoints)
    picks = set()
    for _ in range(5):
        s = opened(rt, Sink(), AttemptRequest(hash_key=42))
        picks.add(s.pool.endpoint.port)
        s.reset()
    assert len(picks) == 1
    (port,) = picks
    other = opened(rt, Sink(), AttemptRequest(hash_key=42, avoid=(rt.endpoints[port - 1],)))
    assert other.pool.endpoint.port != port
