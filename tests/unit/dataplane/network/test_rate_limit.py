"""`rate_limit` (network): new connections per interval, refused peers spend no token, and the
bucket carries over a swap with the same settings (no fresh burst), not a changed one."""

from __future__ import annotations

from tests.unit.dataplane.network.test_connection_limit import chain, facts

from tulle.dataplane.network.filter import Reject
from tulle.proxyconfig.network import ConnectionLimit, ConnectionRateLimit, SourceIP

LIMITED = Reject("rate_limited")


async def test_a_burst_then_rejections_counted_by_reason() -> None:
    c = chain(ConnectionRateLimit(connections=3, interval_ms=60_000))
    got = [await c.connection(facts()).admit() for _ in range(5)]
    assert got == [None, None, None, LIMITED, LIMITED]


async def test_refused_and_over_concurrency_connections_spend_no_token() -> None:
    c = chain(ConnectionRateLimit(connections=1, interval_ms=60_000),
              SourceIP(deny=["10.9.0.0/16"]), ConnectionLimit(max_connections=1))
    assert await c.connection(facts("10.9.0.1")).admit() == Reject("denied")
    held = c.connection(facts())
    assert await held.admit() is None  # the token
    assert await c.connection(facts()).admit() == Reject("over_limit")  # before rate_limit


async def test_the_bucket_carries_over_a_swap_only_with_the_same_settings() -> None:
    old = chain(ConnectionRateLimit(connections=1, interval_ms=60_000))
    assert await old.connection(facts()).admit() is None
    same = chain(ConnectionRateLimit(connections=1, interval_ms=60_000))
    same.adopt(old)
    assert await same.connection(facts()).admit() == LIMITED  # no fresh burst on a swap
    changed = chain(ConnectionRateLimit(connections=2, interval_ms=60_000))
    changed.adopt(same)
    assert await changed.connection(facts()).admit() is None
