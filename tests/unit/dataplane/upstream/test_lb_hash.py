"""Ring hash and Maglev: same key same endpoint (in every process), even and weighted spread
with stated tolerances, minimal disruption when an endpoint leaves, health; the hash key."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.upstream.lb import EndpointState, LoadBalancer, Options
from tulle.dataplane.upstream.lb_hash import Maglev, RingHash, hash_key
from tulle.proxyconfig.model import HashPolicy

_RNG = random.Random(3)
KEYS = [_RNG.getrandbits(64) for _ in range(10_000)]
"""10,000 request keys (as `hash_key` makes them: 64-bit)."""


def eps(*weights: int, base: int = 9000) -> list[EndpointState]:
    return [EndpointState("127.0.0.1", base + i, w) for i, w in enumerate(weights)]


def opts() -> Options:
    return Options(rng=random.Random(1))


BALANCERS = [RingHash, Maglev]
SPREAD = {RingHash: 0.05, Maglev: 0.02}
"""Tolerance of each share (absolute): the ring's 1024 points are lumpier than Maglev's 8191
slots."""


def shares(lb: LoadBalancer) -> dict[int, float]:
    c = Counter(lb.pick(k).port for k in KEYS)  # type: ignore[union-attr]
    return {p - 9000: n / len(KEYS) for p, n in c.items()}


@pytest.mark.parametrize("cls", BALANCERS)
def test_a_key_goes_to_the_same_endpoint_in_every_balancer_over_the_same_endpoints(
        cls: type[RingHash]) -> None:
    a, b = cls(eps(1, 1, 1, 1), opts()), cls(eps(1, 1, 1, 1), opts())
    first = [a.pick(k) for k in KEYS[:500]]
    assert [a.pick(k) for k in KEYS[:500]] == first
    assert [x.port for x in first] == [b.pick(k).port for k in KEYS[:500]]  # type: ignore[union-attr]


@pytest.mark.parametrize("cls", BALANCERS)
def test_keys_spread_evenly_and_by_weight(cls: type[RingHash]) -> None:
    tol = SPREAD[cls]
    even = shares(cls(eps(1, 1, 1, 1), opts()))
    assert all(v == pytest.approx(0.25, abs=tol) for v in even.values()) and len(even) == 4
    weighted = shares(cls(eps(1, 3), opts()))
    assert weighted[0] == pytest.approx(0.25, abs=tol + 0.01)


@pytest.mark.parametrize("cls", BALANCERS)
def test_removing_one_of_five_endpoints_moves_about_a_fifth_of_the_keys(
        cls: type[RingHash]) -> None:
    five = eps(1, 1, 1, 1, 1)
    lb = cls(five, opts())
    before = [lb.pick(k) for k in KEYS]
    lb.set_endpoints(five[:4])
    after = [lb.pick(k) for k in KEYS]
    moved = sum(1 for x, y in zip(before, after, strict=True) if x is not y) / len(KEYS)
    own = sum(1 for x in before if x is five[4]) / len(KEYS)
    assert moved == pytest.approx(0.2, abs=0.05)
    # Beyond the removed endpoint's own keys hardly anything moves (the ring: nothing).
    assert moved - own <= (0.0 if cls is RingHash else 0.03)


@pytest.mark.parametrize("cls", BALANCERS)
def test_a_down_endpoints_keys_go_elsewhere_and_come_back(cls: type[RingHash]) -> None:
    e = eps(1, 1, 1, 1)
    lb = cls(e, opts())
    mine = [k for k in KEYS[:2000] if lb.pick(k) is e[0]]
    others = {k: lb.pick(k) for k in KEYS[:2000] if k not in set(mine)}
    e[0].healthy = False
    assert all(lb.pick(k) not in (e[0], None) for k in mine)
    assert all(lb.pick(k) is others[k] for k in others)  # nobody else's keys moved
    assert len({lb.pick(mine[0]) for _ in range(5)}) == 1  # still consistent while out
    e[0].healthy = True
    assert all(lb.pick(k) is e[0] for k in mine)
    assert lb.pick(mine[0], (e[0],)) is not e[0]  # a retry avoids it


@pytest.mark.parametrize("cls", BALANCERS)
def test_panic_mode_and_a_request_without_a_key(cls: type[RingHash]) -> None:
    e = eps(1, 1, 1, 1)
    for x in e[:3]:
        x.healthy = False
    lb = cls(e, opts())
    assert {lb.pick(k) for k in KEYS[:400]} == set(e)  # 1 of 4 healthy: every endpoint used
    assert cls(e, Options(panic=0)).pick(KEYS[0]) is e[3]
    assert {lb.pick(None) for _ in range(200)} == set(e)  # no key: at random
    assert cls([], opts()).pick(1) is None


def test_maglev_refuses_a_table_size_that_is_not_a_prime() -> None:
    with pytest.raises(ValueError, match="not a prime"):
        Maglev(eps(1), Options(table_size=8192))


def _head(path: bytes = b"/", **headers: bytes) -> RequestHead:
    return RequestHead(b"GET", path, b"svc", b"http",
                       [(k.replace("_", "-").encode(), v) for k, v in headers.items()])


def test_the_hash_key_comes_from_the_first_policy_that_finds_a_value() -> None:
    pol = [HashPolicy(type="header", name="X-User"), HashPolicy(type="cookie", name="sid"),
           HashPolicy(type="query_parameter", name="u"), HashPolicy(type="source_ip")]
    by_header = hash_key(_head(x_user=b"alice"), pol)
    assert by_header is not None and by_header == hash_key(_head(x_user=b"alice"), pol)
    assert by_header != hash_key(_head(x_user=b"bob"), pol)
    by_cookie = hash_key(_head(cookie=b"a=1; sid=42; b=2"), pol)
    assert by_cookie == hash_key(_head(cookie=b"sid=42"), pol) != by_header
    assert hash_key(_head(b"/p?x=1&u=7"), pol) == hash_key(_head(b"/q?u=7"), pol)
    assert hash_key(_head(x_forwarded_for=b"10.0.0.9, 127.0.0.1"), pol) == hash_key(
        _head(x_forwarded_for=b"127.0.0.1"), pol)  # the hop this proxy appended
    assert hash_key(_head(), pol) is None


def test_a_source_ip_key_is_the_hop_this_proxy_appended_whatever_the_client_sent() -> None:
    # The forwarding step appends the peer to the *last* x-forwarded-for field (the combined
    # value reads in order: RFC 9110 5.3).  A client that sent two fields had its own first
    # field's last entry taken as the source IP: it chose its key (ADR 0103).
    pol = [HashPolicy(type="source_ip")]
    head = RequestHead(b"GET", b"/", b"svc", b"http", [
        (b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"1.1.1.1, 127.0.0.1")])
    assert hash_key(head, pol) == hash_key(_head(x_forwarded_for=b"127.0.0.1"), pol)
