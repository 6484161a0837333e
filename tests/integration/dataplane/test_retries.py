"""Retries through a real proxy, against origins that fail on command (`tests/support/flaky.py`):
fail N times then succeed, reset, hang, refuse.  Every test reads what the origin saw (how many
tries, which bodies) and the proxy's metrics and flags."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.flaky import flaky_origin, refused_port
from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import connect, cut_off, read_response_within


def retrying(ports: list[int], retry: dict[str, Any] | None = None,
             budget: dict[str, Any] | None = None, **rule: Any) -> dict[str, Any]:
    cfg = simple_config(ports[0])
    cluster = cfg["clusters"][0]
    cluster["endpoints"] = [{"address": "127.0.0.1", "port": p} for p in ports]
    if budget is not None:
        cluster["retry_budget"] = budget
    r = {"num_retries": 2, "retry_on": ["5xx", "connect-failure", "refused-stream"],
         "backoff_base_ms": 1, "backoff_max_ms": 2}
    r.update(retry or {})
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0].update(retry=r, **rule)
    return cfg


async def ask(p: RunningProxy, method: bytes = b"GET", body: bytes = b"",
              path: bytes = b"/x") -> tuple[int, bytes]:
    r, w = await connect(p.port())
    head = b"%b %b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" % (method, path)
    if body or method in (b"POST", b"PUT"):
        head += b"Content-Length: %d\r\n" % len(body)
    w.write(head + b"\r\n" + body)
    resp = await read_response_within(r, 5.0)
    w.close()
    return resp.status, resp.body


def flags(p: RunningProxy, flag: str) -> float:
    return p.metric("tulle_proxy_requests_total", response_flags=flag)


async def test_two_failures_then_success_is_200_after_three_tries() -> None:
    async with flaky_origin(["503", "503"]) as o, running_proxy(retrying([o.port])) as p:
        assert await ask(p) == (200, b"origin\n")
        assert len(o.seen) == 3
        assert p.metric("tulle_proxy_upstream_retries_total", cluster="backend",
                        reason="503") == 2
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 1


async def test_retries_exhausted_answer_the_last_try_with_flag_urx() -> None:
    async with flaky_origin(default="503") as o, running_proxy(retrying([o.port])) as p:
        assert (await ask(p))[0] == 503
        assert len(o.seen) == 3  # the first try and 2 retries
        assert flags(p, "URX") == 1
        assert p.metric("tulle_proxy_upstream_retries_exhausted_total") == 1


async def test_post_is_not_retried_on_a_status() -> None:
    async with flaky_origin(["503"]) as o, running_proxy(retrying([o.port])) as p:
        assert (await ask(p, b"POST", b"order=1"))[0] == 503
        assert len(o.seen) == 1
        assert p.metric("tulle_proxy_upstream_retries_total") == 0


async def test_post_is_retried_when_the_policy_allows_non_idempotent_methods() -> None:
    cfg = retrying([0], {"retry_non_idempotent": True})
    async with flaky_origin(["503"]) as o:
        cfg["clusters"][0]["endpoints"][0]["port"] = o.port
        async with running_proxy(cfg) as p:
            assert await ask(p, b"POST", b"order=1") == (200, b"origin\n")
            assert [s.body for s in o.seen] == [b"order=1", b"order=1"]


async def test_a_small_body_is_replayed_whole_on_the_retry() -> None:
    body = bytes(range(256)) * 200  # 51,200 bytes: under the 64 KiB bound
    async with flaky_origin(["503"]) as o, running_proxy(retrying([o.port])) as p:
        assert (await ask(p, b"PUT", body))[0] == 200
        assert [s.body for s in o.seen] == [body, body]


async def test_a_body_over_64_kib_is_not_retried() -> None:
    body = b"x" * (64 * 1024 + 1)
    async with flaky_origin(["503"]) as o, running_proxy(retrying([o.port])) as p:
        assert (await ask(p, b"PUT", body))[0] == 503
        assert len(o.seen) == 1 and o.seen[0].body == body


async def test_a_reset_is_retried_on_another_endpoint() -> None:
    async with flaky_origin(default="reset", name=b"a") as bad, \
            flaky_origin(name=b"b") as good, \
            running_proxy(retrying([bad.port, good.port])) as p:
        for _ in range(6):
            assert await ask(p) == (200, b"b\n")
        assert len(bad.seen) <= 6 and len(good.seen) == 6


async def test_connect_failure_is_retried_on_another_endpoint_even_for_post() -> None:
    async with flaky_origin(name=b"b") as good, \
            running_proxy(retrying([refused_port(), good.port])) as p:
        for _ in range(6):
            assert await ask(p, b"POST", b"x") == (200, b"b\n")
        assert p.metric("tulle_proxy_upstream_retries_total", reason="UF") >= 1


async def test_a_hanging_try_times_out_and_the_retry_answers() -> None:
    cfg = retrying([0], backend_timeout_ms=100)
    async with flaky_origin(["hang"]) as o:
        cfg["clusters"][0]["endpoints"][0]["port"] = o.port
        async with running_proxy(cfg) as p:
            assert await ask(p) == (200, b"origin\n")
            assert len(o.seen) == 2
            assert p.metric("tulle_proxy_upstream_retries_total", reason="UT") == 1


async def test_no_retry_policy_means_one_try() -> None:
    async with flaky_origin(["503"]) as o, running_proxy(simple_config(o.port)) as p:
        assert (await ask(p))[0] == 503
        assert len(o.seen) == 1


async def run_load(p: RunningProxy, n: int, concurrency: int = 20) -> list[int]:
    """`n` GETs over `concurrency` keep-alive connections; the statuses."""
    statuses: list[int] = []
    per = n // concurrency

    async def client() -> None:
        r, w = await connect(p.port())
        try:
            for _ in range(per):
                w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = await read_response_within(r, 5.0)
                statuses.append(resp.status)
                if resp.header(b"connection") == b"close":
                    w.close()
                    r, w = await connect(p.port())
        finally:
            w.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


async def test_all_endpoints_failing_retry_traffic_stays_within_the_budget() -> None:
    """The issue's scenario: no retry storm.  Budget 20% + 1/s over 10 s (a reserve of 10);
    `max_retries` raised so that the budget alone limits (the bulkhead would too)."""
    n = 600
    budget = {"percent": 20, "min_retries_per_second": 1, "ttl_ms": 10_000}
    async with flaky_origin(default="503") as a, flaky_origin(default="503") as b:
        cfg = retrying([a.port, b.port], budget=budget)
        cfg["clusters"][0]["limits"] = {"max_retries": 1000}
        async with running_proxy(cfg) as p:
            statuses = await run_load(p, n)
            assert statuses.count(503) == n
            retries = p.metric("tulle_proxy_upstream_retries_total")
            assert len(a.seen) + len(b.seen) == n + retries
            ratio = retries / n
            assert ratio <= 0.2 + 10 / n + 0.005, ratio  # 20% and the reserve, nothing more
            assert ratio >= 0.15, ratio  # the budget was used, not refused outright
            assert p.metric("tulle_proxy_upstream_retry_budget_exhausted_total") > 0


async def test_one_of_three_endpoints_dead_success_stays_above_99_9_percent() -> None:
    """Retries alone (ejection is outlier detection's, later): a third of the first tries fail
    and are retried on a live endpoint.  20 clients put ~7 retries in flight at once, past the
    default `max_retries` (3) that would answer the rest with the failure: raised here."""
    n = 450
    async with flaky_origin() as a, flaky_origin() as b:
        dead = refused_port()
        cfg = retrying([a.port, dead, b.port])
        cfg["clusters"][0]["limits"] = {"max_retries": 32}
        async with running_proxy(cfg) as p:
            statuses = await run_load(p, n)
            ok = statuses.count(200) / len(statuses)
            assert ok >= 0.999, (ok, sorted(set(statuses)))
            assert p.metric("tulle_proxy_upstream_retries_total", reason="UF") > 0


async def test_an_http2_client_gets_the_retried_answer() -> None:
    cfg = retrying([0])
    cfg["listeners"][0]["protocol"] = "http2"
    async with flaky_origin(["503", "reset"]) as o:
        cfg["clusters"][0]["endpoints"][0]["port"] = o.port
        async with running_proxy(cfg) as p:
            c = await H2Client.connect(p.port())
            resp = await c.request("GET", "/x")
            c.close()
            assert resp.status == 200 and len(o.seen) == 3


async def test_a_response_that_began_is_never_retried() -> None:
    """The HTTP/2 origin's `/reset` sends a head and 1 KiB, then resets the stream: the client
    has the head already, so the reset reaches it (cut off), never a second try."""
    async with running_h2_origin() as (port, _):
        cfg = retrying([port], {"retry_on": ["reset", "5xx"]})
        cfg["clusters"][0]["protocol"] = "http2"
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            w.write(b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await cut_off(r)
            w.close()
            assert p.metric("tulle_proxy_upstream_retries_total") == 0
