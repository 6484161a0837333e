"""Locality-aware balancing: the caller's zone keeps min(1, 1.4 x its healthy share) of the
requests, the rest spills over; panic mode over the whole cluster."""

from __future__ import annotations

import random

import pytest

from tulle.dataplane.upstream.lb import EndpointState, Options, build
from tulle.dataplane.upstream.lb_zone import Zoned

N = 10_000


def zoned(policy: str = "round_robin") -> tuple[Zoned, list[EndpointState]]:
    e = [EndpointState("127.0.0.1", 9000 + i, 1, zone="a" if i < 4 else "b") for i in range(8)]
    lb = build(policy, e, Options(local_zone="a", rng=random.Random(5)))
    assert isinstance(lb, Zoned)
    return lb, e


def local_share(lb: Zoned) -> float:
    return sum(1 for _ in range(N) if lb.pick().zone == "a") / N  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request", "peak_ewma"])
def test_a_healthy_zone_keeps_all_its_callers_requests(policy: str) -> None:
    lb, _ = zoned(policy)
    assert local_share(lb) == 1.0


def test_the_zone_spills_over_as_its_healthy_share_drops() -> None:
    lb, e = zoned()
    e[0].healthy = False  # 75% healthy: 1.4 x 0.75 > 1, all stays local
    assert local_share(lb) == 1.0
    e[1].healthy = False  # 50%: 70% stays, within 3 points
    assert local_share(lb) == pytest.approx(0.7, abs=0.03)
    e[2].healthy = False  # 25%: 35%
    assert local_share(lb) == pytest.approx(0.35, abs=0.03)
    assert all(lb.pick() not in e[:3] for _ in range(1000))
    e[3].healthy = False  # none: everything elsewhere (4 of 8 healthy: not yet panic)
    assert local_share(lb) == 0.0


def test_panic_over_the_whole_cluster_uses_every_endpoint() -> None:
    lb, e = zoned()
    for x in e[:3] + e[4:7]:
        x.healthy = False  # 2 of 8 healthy < 50%
    assert {lb.pick() for _ in range(400)} == set(e)


def test_hashing_balancers_are_not_wrapped() -> None:
    e = [EndpointState("127.0.0.1", 9000, zone="a")]
    assert not isinstance(build("maglev", e, Options(local_zone="a")), Zoned)


def test_a_retry_leaves_the_zone_when_its_only_endpoint_is_avoided() -> None:
    e = [EndpointState("127.0.0.1", 9000, zone="a"), EndpointState("127.0.0.1", 9001, zone="b")]
    lb = build("peak_ewma", e, Options(local_zone="a", rng=random.Random(2)))
    assert {lb.pick() for _ in range(50)} == {e[0]}
    assert {lb.pick(None, (e[0],)) for _ in range(50)} == {e[1]}
