"""Round robin: even cycles, smooth weighting, unhealthy endpoints skipped."""

from __future__ import annotations

from collections import Counter

from tulle.dataplane.upstream.lb import EndpointState, RoundRobin


def eps(*weights: int) -> list[EndpointState]:
    return [EndpointState("127.0.0.1", 9000 + i, w) for i, w in enumerate(weights)]


def test_equal_weights_cycle_in_order() -> None:
    e = eps(1, 1, 1)
    lb = RoundRobin(e)
    assert [lb.pick() for _ in range(6)] == e + e


def test_smooth_weighted_round_robin_spreads_heavy_turns() -> None:
    e = eps(5, 1, 1)
    lb = RoundRobin(e)
    seq = [lb.pick() for _ in range(7)]
    assert Counter(x.port for x in seq if x) == {9000: 5, 9001: 1, 9002: 1}
    # nginx's smooth WRR never sends the heavy endpoint's 5 turns back to back
    assert seq[:3] != [e[0]] * 3


def test_unhealthy_endpoints_are_skipped_and_none_when_all_down() -> None:
    e = eps(1, 1)
    e[0].healthy = False
    lb = RoundRobin(e)
    assert {lb.pick() for _ in range(4)} == {e[1]}
    e[1].healthy = False
    assert lb.pick() is None
    assert RoundRobin([]).pick() is None
