"""Token buckets on virtual time: bursts, even refill, waits, and the LRU bound on keys."""

from __future__ import annotations

from tulle.dataplane.ratelimit.buckets import KeyedBuckets, TokenBucket


def test_a_full_bucket_admits_its_burst_then_refuses() -> None:
    b = TokenBucket(3, 1.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.remaining(0.0) == 0


def test_it_refills_evenly_and_never_above_capacity() -> None:
    b = TokenBucket(10, 1.0, now=0.0)  # 10 per second: one token per 100 ms
    for _ in range(10):
        assert b.take(0.0)
    assert not b.take(0.05)
    assert b.take(0.1001)
    assert not b.take(0.1001)
    assert b.remaining(100.0) == 10  # idle for long: full, not 1000


def test_wait_and_reset_say_when_the_next_token_and_a_full_bucket_come() -> None:
    b = TokenBucket(2, 10.0, now=0.0)  # one token per 5 s
    assert b.take(0.0) and b.take(0.0)
    assert abs(b.wait(1.0) - 4.0) < 1e-9
    assert b.reset_after(1.0) == 9  # 1.8 tokens missing at 0.2/s: 9 s
    assert b.wait(5.0) == 0.0


def test_over_a_long_run_the_admitted_rate_is_the_configured_one() -> None:
    b = TokenBucket(5, 1.0, now=0.0)
    admitted = sum(b.take(i * 0.001) for i in range(10_000))  # 1000 req/s for 10 s
    assert 5 + 49 <= admitted <= 5 + 50  # the burst, then 5 per second (9.999 s)


def test_keyed_buckets_are_separate_and_bounded_least_recently_used_first() -> None:
    k = KeyedBuckets(1, 60.0, max_keys=2)
    assert k.get(b"a", 0.0).take(0.0)
    assert k.get(b"b", 0.0).take(0.0)
    assert not k.get(b"a", 0.0).take(0.0)  # a's own bucket is empty; b's use did not matter
    k.get(b"c", 0.0)  # evicts b (a was used more recently)
    assert len(k) == 2 and set(k.table) == {b"a", b"c"}
    assert k.get(b"b", 0.0).take(0.0)  # b comes back full


def test_a_flood_of_distinct_keys_keeps_memory_bounded() -> None:
    k = KeyedBuckets(1, 1.0, max_keys=100)
    for i in range(10_000):
        k.get(b"%d" % i, 0.0).take(0.0)
    assert len(k) == 100
