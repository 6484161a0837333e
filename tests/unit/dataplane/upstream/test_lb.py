"""Round robin: even cycles, smooth weighting, unhealthy and avoided endpoints skipped;
rendezvous hashing: stable, minimally disruptive, weighted."""

from __future__ import annotations

from collections import Counter

from tulle.dataplane.upstream.lb import EndpointState, Options, Rendezvous, RoundRobin, build

NO_PANIC = Options(panic=0)


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
    lb = RoundRobin(e, NO_PANIC)
    assert {lb.pick() for _ in range(4)} == {e[1]}
    e[1].healthy = False
    assert lb.pick() is None
    assert RoundRobin([]).pick() is None


def test_avoided_endpoints_are_skipped_while_another_is_healthy() -> None:
    e = eps(1, 1, 1)
    lb = RoundRobin(e)
    assert all(lb.pick(None, (e[0],)) is not e[0] for _ in range(6))
    e[1].healthy = False
    assert [lb.pick(None, (e[0],)) for _ in range(3)] == [e[2]] * 3


def test_when_every_healthy_endpoint_is_avoided_the_pick_ignores_avoid() -> None:
    one = eps(1)
    assert RoundRobin(one).pick(None, (one[0],)) is one[0]  # a retry goes back to it
    e = eps(3, 1)  # weighted too
    e[1].healthy = False
    assert RoundRobin(e).pick(None, (e[0],)) is e[0]
    e[0].healthy = False
    assert RoundRobin(e, NO_PANIC).pick(None, (e[0],)) is None


def test_weighted_round_robin_skips_avoided_endpoints() -> None:
    e = eps(5, 1, 1)
    lb = RoundRobin(e)
    seq = [lb.pick(None, (e[0],)) for _ in range(4)]
    assert Counter(x.port for x in seq if x) == {9001: 2, 9002: 2}


def test_round_robin_ignores_the_hash_key() -> None:
    e = eps(1, 1)
    lb = RoundRobin(e)
    assert [lb.pick(7) for _ in range(4)] == e + e


def test_rendezvous_sends_a_key_to_the_same_endpoint_every_time() -> None:
    e = eps(1, 1, 1, 1)
    lb = Rendezvous(e)
    first = {k: lb.pick(k) for k in range(200)}
    assert all(lb.pick(k) is first[k] for k in range(200))
    assert len({id(x) for x in first.values()}) == 4  # keys spread over every endpoint
    # Another balancer (another proxy, another process) over the same endpoints agrees.
    other = Rendezvous(eps(1, 1, 1, 1))
    assert all(other.pick(k).port == first[k].port for k in range(200))  # type: ignore[union-attr]


def test_rendezvous_moves_only_the_keys_of_a_removed_endpoint() -> None:
    e = eps(1, 1, 1, 1)
    lb = Rendezvous(e)
    before = {k: lb.pick(k) for k in range(400)}
    lb.set_endpoints(e[:3])
    after = {k: lb.pick(k) for k in range(400)}
    moved = [k for k in range(400) if after[k] is not before[k]]
    assert moved and all(before[k] is e[3] for k in moved)


def test_rendezvous_weights_shift_keys_and_avoid_and_health_are_respected() -> None:
    e = eps(3, 1)
    lb = Rendezvous(e)
    share = Counter(lb.pick(k).port for k in range(4000))  # type: ignore[union-attr]
    assert 0.68 < share[9000] / 4000 < 0.82  # ~3/4
    k = next(k for k in range(100) if lb.pick(k) is e[0])
    assert lb.pick(k, (e[0],)) is e[1]
    e[1].healthy = False
    assert lb.pick(k, (e[0],)) is e[0]  # nothing else healthy: avoid gives way
    assert lb.pick(None) is e[0]  # no key: round robin over the healthy ones


def test_build_knows_both_policies() -> None:
    assert isinstance(build("round_robin", eps(1)), RoundRobin)
    assert isinstance(build("rendezvous", eps(1)), Rendezvous)


def test_a_single_endpoint_is_picked_while_healthy() -> None:
    one = eps(1)
    lb = RoundRobin(one, NO_PANIC)
    assert [lb.pick(), lb.pick(None, (one[0],))] == [one[0], one[0]]
    one[0].healthy = False
    assert lb.pick() is None
    assert RoundRobin(one).pick() is one[0]  # panic mode (the default, 50%): use it anyway
