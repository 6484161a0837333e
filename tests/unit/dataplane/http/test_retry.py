"""Retry decisions without sockets: what is retried, the backoff's bounds, full jitter."""

from __future__ import annotations

import random

from tulle.dataplane.exchange import ResponseHead, UpstreamError, connect_failure, upstream_reset
from tulle.dataplane.http.retry import RetryRuntime
from tulle.dataplane.upstream.limits import overflow_error
from tulle.proxyconfig.retry import RetryPolicy


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
