"""Retry decisions without sockets: what is retried, the backoff's bounds, full jitter."""

from __future__ import annotations

import asyncio
import random

from tulle.dataplane.exchange import (
    RequestHead,
    ResponseHead,
    UpstreamError,
    connect_failure,
    upstream_reset,
)
from tulle.dataplane.http.retry import Retrier, RetryRuntime
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.limits import Limits, overflow_error
from tulle.proxyconfig.retry import RetryBudget, RetryPolicy


def runtime(**kw: object) -> RetryRuntime:
    return RetryRuntime(RetryPolicy(**kw))  # type: ignore[arg-type]


def test_gateway_error_retries_502_503_504_only() -> None:
    r = runtime(retry_on=["gateway-error"])
    assert [s for s in (500, 501, 502, 503, 504, 505) if r.status_retried(
        ResponseHead(s, []), True)] == [502, 503, 504]


def test_5xx_retries_every_5xx_and_every_error_but_overflow() -> None:
    r = runtime(retry_on=["5xx"])
    assert r.status_retried(ResponseHead(500, []), True)
    assert not r.status_retried(ResponseHead(429, []), True)
    for flag in ("UF", "UC", "UT", "UPE"):
        assert r.error_retried(UpstreamError(502, flag, "x"))
    assert not r.error_retried(overflow_error("limit"))


def test_a_peers_limit_or_overload_answer_is_never_retried() -> None:
    # ADR 0100: a sidecar shedding load marks its 503 (UO, OL); the calling sidecar's policy
    # does not send it (1 + retries) times the requests.  Envoy reads the same header.
    r = runtime(retry_on=["5xx", "retriable-grpc-statuses"], grpc_statuses=[14])
    marked = [(b"x-envoy-overloaded", b"true")]
    assert r.status_retried(ResponseHead(503, []), True)
    assert not r.status_retried(ResponseHead(503, list(marked)), True)
    assert r.status_retried(ResponseHead(200, [(b"grpc-status", b"14")]), True)
    assert not r.status_retried(ResponseHead(200, [(b"grpc-status", b"14"), *marked]), True)


def test_listed_status_codes() -> None:
    r = runtime(retry_on=["retriable-status-codes"], status_codes=[409, 429])
    assert r.status_retried(ResponseHead(429, []), False)
    assert not r.status_retried(ResponseHead(503, []), False)


def test_grpc_statuses_from_a_trailers_only_answer() -> None:
    r = runtime(retry_on=["retriable-grpc-statuses"], grpc_statuses=[14])
    unavailable = ResponseHead(200, [(b"grpc-status", b"14")])
    assert r.status_retried(unavailable, True)
    assert not r.status_retried(unavailable, False)  # a body follows: not trailers-only
    assert not r.status_retried(ResponseHead(200, [(b"grpc-status", b"5")]), True)


def test_reset_connect_failure_and_refused_stream_are_separate_conditions() -> None:
    refused = UpstreamError(502, "UC", "REFUSED_STREAM", retry_safe=True)
    assert runtime(retry_on=["connect-failure"]).error_retried(connect_failure("x"))
    assert not runtime(retry_on=["connect-failure"]).error_retried(upstream_reset("x"))
    assert runtime(retry_on=["reset"]).error_retried(upstream_reset("x"))
    assert runtime(retry_on=["refused-stream"]).error_retried(refused)
    assert not runtime(retry_on=["refused-stream"]).error_retried(upstream_reset("x"))


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    r = runtime(backoff_base_ms=25, backoff_max_ms=250)
    rng = random.Random(7)
    for n, cap in ((1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (40, 0.25)):
        samples = [r.backoff(n, rng) for _ in range(2000)]
        assert min(samples) >= 0 and max(samples) <= cap
        assert max(samples) > 0.9 * cap and min(samples) < 0.1 * cap  # the whole range
        assert abs(sum(samples) / len(samples) - cap / 2) < cap * 0.05  # uniform: mean cap/2


# -- the Retrier against a scripted cluster and stream (no sockets) -------------------------

class FakeTry:
    def __init__(self, n: int) -> None:
        self.n = n
        self.data: list[bytes] = []
        self.ended = False
        self.was_reset = False
        self.paused = False

    @property
    def endpoint_key(self) -> str:
        return f"ep{self.n}"

    def send_data(self, data: bytes) -> None:
        self.data.append(data)

    def send_end(self, trailers: object = None) -> None:
        self.ended = True

    def reset(self) -> None:
        self.was_reset = True

    def pause_response(self) -> None:
        self.paused = True

    def resume_response(self) -> None:
        self.paused = False


class FakeCluster:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        metrics = ProxyMetrics()
        self.name = "c"
        self.loop = loop
        self.limits = Limits("c", None, metrics)
        self.m_retries = metrics.upstream_retries
        self.m_budget_exhausted = metrics.upstream_retry_budget_exhausted
        self.m_retries_exhausted = metrics.upstream_retries_exhausted
        self.tries: list[FakeTry] = []

    def open_stream(self, head: object, sink: object, end: bool, request: object) -> FakeTry:
        t = FakeTry(len(self.tries))
        self.tries.append(t)
        return t


class FakeStream:
    def __init__(self) -> None:
        self.flags = ""
        self.heads: list[int] = []
        self.errors: list[str] = []
        self.paused = 0
        self.resumed = 0

    def on_response_head(self, head: ResponseHead, end: bool) -> None:
        self.heads.append(head.status)

    def on_upstream_error(self, error: UpstreamError) -> None:
        self.errors.append(error.flag)

    def pause_request_body(self) -> None:
        self.paused += 1

    def resume_request_body(self) -> None:
        self.resumed += 1


def retrier(method: bytes = b"GET", bodiless: bool = True, **kw: object,
            ) -> tuple[Retrier, FakeCluster, FakeStream]:
    cluster = FakeCluster(asyncio.get_running_loop())
    stream = FakeStream()
    policy = runtime(**{"retry_on": ["5xx"], "backoff_base_ms": 1000, "backoff_max_ms": 1000,
                        **kw})
    head = RequestHead(method, b"/", b"a", b"http", [])
    r = Retrier(policy, cluster, head, stream, bodiless)  # type: ignore[arg-type]
    assert r.open(None) is r
    return r, cluster, stream


async def test_a_reset_during_the_backoff_cancels_the_next_try() -> None:
    r, cluster, stream = retrier()
    r.on_response_head(ResponseHead(503, []), True)
    assert cluster.tries[0].was_reset and r.timer is not None and stream.heads == []
    timer = r.timer
    r.reset()  # the client went away (or the route timeout passed)
    assert timer.cancelled() and r.timer is None and len(cluster.tries) == 1


async def test_the_body_is_replayed_whole_and_ended_on_the_next_try() -> None:
    r, cluster, stream = retrier(b"PUT", bodiless=False)
    r.send_data(b"ab")
    r.send_data(b"cd")
    r.send_end()
    r.on_response_head(ResponseHead(502, []), True)
    r._next()  # (the backoff's timer, run now)
    assert cluster.tries[1].data == [b"ab", b"cd"] and cluster.tries[1].ended
    r.on_response_head(ResponseHead(200, []), False)
    assert stream.heads == [200] and r.chunks == []  # accepted: nothing kept any more


async def test_body_arriving_in_the_backoff_past_the_bound_pauses_the_client() -> None:
    r, cluster, stream = retrier(b"PUT", bodiless=False, max_body_bytes=4)
    r.send_data(b"ab")
    r.on_response_head(ResponseHead(503, []), True)  # retried: 2 bytes so far
    r.send_data(b"cdef")  # in the backoff, past the bound: held, the client paused
    assert stream.paused == 1 and not r.replayable
    r._next()
    assert cluster.tries[1].data == [b"ab", b"cdef"] and stream.resumed == 1
    r.on_response_head(ResponseHead(503, []), True)  # no replay possible any more
    assert stream.heads == [503]


async def test_a_body_over_the_bound_is_not_retried() -> None:
    r, cluster, stream = retrier(b"PUT", bodiless=False, max_body_bytes=4)
    r.send_data(b"abcde")
    r.on_response_head(ResponseHead(503, []), True)
    assert stream.heads == [503] and len(cluster.tries) == 1


async def test_post_is_retried_on_a_connect_failure_only() -> None:
    r, cluster, stream = retrier(b"POST", retry_on=["5xx", "connect-failure"])
    r.on_upstream_error(connect_failure("refused"))
    assert r.timer is not None  # the upstream never saw it: safe for any method
    r.timer.cancel()
    r._next()
    r.on_response_head(ResponseHead(503, []), True)
    assert stream.heads == [503] and len(cluster.tries) == 2


async def test_exhausted_retries_flag_the_record_urx() -> None:
    r, cluster, stream = retrier(num_retries=1)
    r.on_upstream_error(upstream_reset("x"))
    assert r.timer is not None
    r.timer.cancel()
    r._next()
    r.on_upstream_error(upstream_reset("again"))
    assert stream.errors == ["UC,URX"] and len(cluster.tries) == 2


async def test_the_budget_refuses_a_retry_and_counts_it() -> None:
    r, cluster, stream = retrier()
    cluster.limits.budget.configure(RetryBudget(percent=0, min_retries_per_second=0))
    r.on_response_head(ResponseHead(503, []), True)
    assert stream.heads == [503] and r.timer is None
    assert cluster.m_budget_exhausted.labels("c").value == 1


async def test_a_try_that_fails_inside_open_is_retried_not_kept() -> None:
    """A pool may fail an exchange synchronously: the Retrier must not keep that try as the
    current one (the request body would go to it)."""
    r, cluster, stream = retrier(b"PUT", bodiless=False)
    failing = FakeCluster(cluster.loop)
    first = failing.open_stream

    def fail_first(head: object, sink: object, end: bool, request: object) -> FakeTry:
        t = first(head, sink, end, request)
        if len(failing.tries) == 1:
            r2.on_upstream_error(connect_failure("refused at once"))
        return t

    failing.open_stream = fail_first  # type: ignore[method-assign]
    r2 = Retrier(r.policy, failing, r.head, stream, False)  # type: ignore[arg-type]
    assert r2.open(None) is r2
    assert r2.cur is None and r2.timer is not None  # waiting to retry, nothing current
    r2.send_data(b"body")
    r2.timer.cancel()
    r2._next()
    assert failing.tries[1].data == [b"body"] and failing.tries[0].data == []


async def test_a_retry_a_limit_refuses_after_the_backoff_answers_the_failure_it_retried() -> None:
    r, cluster, stream = retrier(retry_on=["connect-failure"])
    r.on_upstream_error(connect_failure("refused"))
    assert r.timer is not None
    r.timer.cancel()
    r._next()
    r.on_upstream_error(cluster.limits.overflow("requests"))  # the limit filled meanwhile
    assert stream.errors == ["UF,UO"]


async def test_a_retried_status_a_limit_refuses_is_answered_with_that_status() -> None:
    got: list[UpstreamError] = []
    r, cluster, stream = retrier()
    stream.on_upstream_error = got.append  # type: ignore[method-assign]
    r.on_response_head(ResponseHead(502, []), True)
    assert r.timer is not None
    r.timer.cancel()
    r._next()
    r.on_upstream_error(cluster.limits.overflow("retries"))
    assert [(e.status, e.flag) for e in got] == [(502, "UO")]
    assert "upstream answered 502" in got[0].detail


def test_a_listed_grpc_status_names_itself_as_the_reason() -> None:
    r = runtime(retry_on=["retriable-grpc-statuses"], grpc_statuses=[14])
    assert r.status_retried(ResponseHead(200, [(b"grpc-status", b"14")]), True) == "grpc-14"
    assert runtime(retry_on=["5xx"]).status_retried(ResponseHead(503, []), True) == "503"


async def test_a_refused_stream_after_some_body_is_retried_with_the_kept_body() -> None:
    r, cluster, stream = retrier(b"POST", bodiless=False, retry_on=["refused-stream"])
    r.send_data(b"body")
    r.send_end()
    refused = UpstreamError(502, "UC", "REFUSED_STREAM", retry_safe=False, unprocessed=True)
    r.on_upstream_error(refused)
    assert r.timer is not None  # not processed: safe for a POST, the body is kept
    r.timer.cancel()
    r._next()
    assert cluster.tries[1].data == [b"body"] and cluster.tries[1].ended
