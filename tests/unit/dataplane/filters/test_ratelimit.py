"""The RateLimit filter on a scripted stream: local buckets per route / source / header, the
429 and its headers, gRPC RESOURCE_EXHAUSTED, and the global window against a real
redis-server (admits, limits, fails open through the fallback or closed when Redis is out,
and never waits past its timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from tests.support.proxy import free_port
from tests.support.redis import redis_server
from tests.unit.dataplane.filters.test_fault import GRPC, Counters, Stream

from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.filter import CONTINUE, STOP, FilterFactory
from tulle.proxyconfig.filters import HTTPFilter

ALICE = "spiffe://mesh.local/ns/shop/sa/alice"
BOB = "spiffe://mesh.local/ns/shop/sa/bob"


def factory(raw: dict[str, Any]) -> FilterFactory:
    return factory_for(msgspec.convert({"type": "RateLimit", **raw}, HTTPFilter))


def run(f: FilterFactory, s: Stream) -> int:
    return f.create().on_request_head(s)  # type: ignore[arg-type]


async def test_past_the_bucket_a_429_with_retry_after_and_the_ietf_headers() -> None:
    f = factory({"name": "ns/rl", "local": {"requests": 3, "interval_ms": 60_000}})
    c = Counters()
    assert [run(f, Stream(counters=c)) for _ in range(3)] == [CONTINUE] * 3
    s = Stream(counters=c)
    assert run(f, s) == STOP
    status, body, headers = s.replies[0]
    assert (status, body, s.record.flags) == (429, b"rate limited\n", "RL")
    h = dict(headers)
    assert h[b"retry-after"] == b"20"  # one token per 20 s
    assert h[b"ratelimit-policy"] == b'"local";q=3;w=60'
    assert h[b"ratelimit"] == b'"local";r=0;t=20'
    assert c.events == [("limited", "ns/rl", "local")]


async def test_grpc_callers_get_resource_exhausted() -> None:
    f = factory({"local": {"requests": 1, "interval_ms": 1000}})
    run(f, Stream(GRPC))
    s = Stream(GRPC)
    assert run(f, s) == STOP
    assert (b"grpc-status", b"8") in s.replies[0][2]


async def test_per_source_buckets_separate_identities_and_fall_back_to_the_ip() -> None:
    f = factory({"local": {"requests": 2, "interval_ms": 60_000, "by": "source"}})
    assert [run(f, Stream(identity=ALICE)) for _ in range(3)] == [CONTINUE, CONTINUE, STOP]
    assert run(f, Stream(identity=BOB)) == CONTINUE  # bob has his own bucket
    # The same IP with and without an identity are different callers; two IPs too.
    assert run(f, Stream(ip="10.0.0.1")) == CONTINUE
    assert run(f, Stream(ip="10.0.0.2")) == CONTINUE


async def test_per_header_buckets_and_a_huge_value_is_keyed_by_digest() -> None:
    f = factory({"local": {"requests": 1, "interval_ms": 60_000, "by": "header",
                           "header": "X-Tenant", "max_buckets": 4}})
    assert run(f, Stream([(b"x-tenant", b"a")])) == CONTINUE
    assert run(f, Stream([(b"x-tenant", b"a")])) == STOP
    assert run(f, Stream([(b"x-tenant", b"b")])) == CONTINUE
    assert run(f, Stream()) == CONTINUE  # no header: the empty value's bucket
    big = b"z" * 5000
    assert run(f, Stream([(b"x-tenant", big)])) == CONTINUE
    local = f.local  # type: ignore[attr-defined]
    assert all(len(k) <= 128 for k in local.keyed.table)
    for i in range(100):  # a key flood stays within max_buckets
        run(f, Stream([(b"x-tenant", b"%d" % i)]))
    assert len(local.keyed) == 4


def global_cfg(address: str, **extra: Any) -> dict[str, Any]:
    return {"name": "ns/g", "global": {"requests": 5, "interval_ms": 10_000, "redis": address,
                                       "key": "unit/g", **extra}}


async def outcome(f: FilterFactory, c: Counters) -> str:
    """One request through the filter: `pass`, or the 429's scope."""
    s = Stream(counters=c)
    flt = f.create()
    v = flt.on_request_head(s)  # type: ignore[arg-type]
    if v == CONTINUE:
        return "pass"
    if s.replies:
        return "429"
    await asyncio.wait_for(s.settled.wait(), 2)
    if s.resumed.is_set():
        return "pass"
    assert s.replies, "neither resumed nor answered"
    assert dict(s.replies[0][2])[b"ratelimit-policy"] == b'"global";q=5;w=10'
    return "429"


async def test_the_global_window_admits_its_quota_then_limits() -> None:
    async with redis_server() as r:
        f = factory(global_cfg(r.address))
        c = Counters()
        got = [await outcome(f, c) for _ in range(8)]
        assert got == ["pass"] * 5 + ["429"] * 3
        assert (await r.command(b"PTTL", b"tulle:rl:unit/g")).startswith(b":")
        ttl = int((await r.command(b"PTTL", b"tulle:rl:unit/g"))[1:])
        assert 0 < ttl <= 10_000  # the window expires on its own


async def test_redis_out_fails_open_through_the_fallback_bucket() -> None:
    f = factory(global_cfg(f"127.0.0.1:{free_port()}", fallback_requests=2))
    c = Counters()
    got = [await outcome(f, c) for _ in range(4)]
    assert got == ["pass", "pass", "429", "429"]
    assert ("backend_failure", "ns/g") in c.events


async def test_redis_out_fails_closed_with_429() -> None:
    f = factory(global_cfg(f"127.0.0.1:{free_port()}", failure_mode="closed"))
    c = Counters()
    assert [await outcome(f, c) for _ in range(3)] == ["429"] * 3


async def test_a_redis_error_reply_applies_the_failure_mode() -> None:
    async with redis_server() as r:
        await r.command(b"SET", b"tulle:rl:unit/g", b"not-a-number")  # INCR will fail
        c = Counters()
        assert await outcome(factory(global_cfg(r.address, failure_mode="closed")), c) == "429"
        assert ("backend_failure", "ns/g") in c.events
        assert await outcome(factory(global_cfg(r.address)), Counters()) == "pass"


async def test_a_redis_that_never_answers_costs_at_most_the_timeout() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # reads nothing, answers nothing

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    f = factory(global_cfg(f"127.0.0.1:{port}", timeout_ms=20))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await outcome(f, Counters()) == "pass"  # open, no fallback limit
    assert loop.time() - t0 < 0.2
    for w in held:
        w.close()
    srv.close()
    await srv.wait_closed()


def test_a_local_only_limit_allocates_nothing_per_request_a_global_one_does() -> None:
    local = factory({"local": {"requests": 1, "interval_ms": 1000}})
    assert local.stateless and local.create() is local.create()
    both = factory(global_cfg("127.0.0.1:1"))
    assert not both.stateless and both.create() is not both.create()


def test_a_successor_with_the_same_settings_adopts_buckets_and_redis_client() -> None:
    store: dict[str, object] = {}
    raw = {"local": {"requests": 1, "interval_ms": 1000}, **global_cfg("127.0.0.1:1")}
    old = factory(raw)
    old.adopt(store)  # type: ignore[attr-defined]
    new = factory(raw)
    new.adopt(store)  # type: ignore[attr-defined]
    assert new.local is old.local and new.global_ is old.global_  # type: ignore[attr-defined]
    changed = factory({**raw, "local": {"requests": 2, "interval_ms": 1000}})
    changed.adopt(store)  # type: ignore[attr-defined]
    assert changed.local is not old.local  # type: ignore[attr-defined]
    assert changed.global_ is old.global_  # type: ignore[attr-defined]  # global unchanged


async def test_after_redis_comes_back_the_global_window_counts_again() -> None:
    async with redis_server() as r:
        f = factory(global_cfg(r.address, failure_mode="closed"))
        assert await outcome(f, Counters()) == "pass"
        await r.stop()
        assert await outcome(f, Counters()) == "429"  # closed while it is away
        await r.start()
        client = f.global_.client  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        client.down_until = loop.time()  # past the retry interval (no sleeping here)
        got = [await outcome(f, Counters()) for _ in range(6)]
        assert got == ["pass"] * 5 + ["429"]  # a fresh window in the restarted Redis
