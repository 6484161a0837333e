"""Random, least request (P2C) and peak-EWMA: distributions with stated tolerances, health,
panic mode, slow start and the latency estimate's peak, decay and penalty, in virtual time."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tulle.dataplane.upstream.lb import EndpointState, LoadBalancer, Options, RoundRobin, build
from tulle.dataplane.upstream.lb_load import PENALTY, LeastRequest, PeakEwma, Random

N = 10_000


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def eps(*weights: int) -> list[EndpointState]:
    return [EndpointState("127.0.0.1", 9000 + i, w) for i, w in enumerate(weights)]


def opts(**kw: object) -> Options:
    kw.setdefault("rng", random.Random(7))
    return Options(**kw)  # type: ignore[arg-type]


def shares(lb: LoadBalancer, n: int = N) -> dict[int, float]:
    c = Counter(lb.pick().port for _ in range(n))  # type: ignore[union-attr]
    return {port - 9000: k / n for port, k in c.items()}


@pytest.mark.parametrize("policy", ["random", "round_robin"])
def test_weights_1_to_3_give_25_percent_within_3_points(policy: str) -> None:
    s = shares(build(policy, eps(1, 3), opts()))
    assert s[0] == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("cls", [Random, LeastRequest, PeakEwma])
def test_equal_endpoints_share_evenly_within_3_points(cls: type[Random]) -> None:
    s = shares(cls(eps(1, 1, 1), opts()))
    assert all(v == pytest.approx(1 / 3, abs=0.03) for v in s.values()) and len(s) == 3


@pytest.mark.parametrize("cls", [Random, LeastRequest, PeakEwma])
def test_unhealthy_and_avoided_endpoints_are_skipped(cls: type[Random]) -> None:
    e = eps(1, 1, 1, 1)
    e[0].healthy = False
    lb = cls(e, opts())
    assert e[0] not in {lb.pick() for _ in range(500)}
    assert {lb.pick(None, (e[1],)) for _ in range(500)} == {e[2], e[3]}
    e[2].healthy = e[3].healthy = False  # 1 of 4 healthy < 50%: panic, every endpoint used
    assert {lb.pick() for _ in range(500)} == set(e)
    off = cls(e, opts(panic=0))
    assert {off.pick() for _ in range(100)} == {e[1]}
    e[1].healthy = False
    assert off.pick() is None


def test_least_request_avoids_the_endpoint_with_requests_in_flight() -> None:
    e = eps(1, 1, 1)
    e[0].active = 10
    lb = LeastRequest(e, opts())
    assert e[0] not in {lb.pick() for _ in range(1000)}  # two different draws: it always loses


def test_least_request_weighs_in_flight_by_weight() -> None:
    e = eps(1, 4)  # (1+1)/1 = 2 > (3+1)/4 = 1: the heavy one still wins at 3 in flight
    e[1].active = 3
    assert {LeastRequest(e, opts()).pick() for _ in range(100)} == {e[1]}


def test_peak_ewma_takes_a_slow_sample_at_once_and_forgets_it_over_time() -> None:
    ep = EndpointState("127.0.0.1", 1)
    for i in range(10):
        ep.sample(0.001, 100.0 + i * 0.01)
    assert ep.ewma == pytest.approx(0.001)
    ep.sample(0.050, 100.2)
    assert ep.ewma == 0.050  # the peak: no averaging upward
    ep.sample(0.001, 100.3)  # 0.1 s later: the estimate barely moves (decay 10 s)
    assert 0.045 < ep.ewma < 0.050
    ep.sample(0.001, 160.0)  # a minute later: the old peak is gone
    assert ep.ewma == pytest.approx(0.001, abs=0.0002)


def test_peak_ewma_moves_traffic_off_a_slow_endpoint_and_back_once_it_decays() -> None:
    clock = Clock(100.0)
    e = eps(1, 1, 1)
    e[0].sample(0.051, 100.0)
    e[1].sample(0.001, 100.0)
    e[2].sample(0.001, 100.0)
    lb = PeakEwma(e, opts(clock=clock))
    assert shares(lb, 3000).get(0, 0.0) == 0.0
    clock.t = 160.0  # the fast ones answered just now; the slow one's estimate decayed
    e[1].sample(0.001, 160.0)
    e[2].sample(0.001, 160.0)
    assert shares(lb, 3000).get(0, 0.0) > 0.2


def test_peak_ewma_cost_is_latency_times_load_with_a_penalty_without_samples() -> None:
    clock = Clock(100.0)
    e = eps(1, 1)
    lb = PeakEwma(e, opts(clock=clock))
    assert lb._load(e[0], 100.0) == 0.0  # idle and never sampled: tried at once
    e[0].active = 2
    assert lb._load(e[0], 100.0) == PENALTY + 2  # in flight and still no sample: penalised
    e[1].sample(0.010, 100.0)
    e[1].active = 4
    assert lb._load(e[1], 100.0) == pytest.approx(0.050)  # 10 ms x (4 + 1)
    assert {lb.pick() for _ in range(50)} == {e[1]}


def test_peak_ewma_prefers_an_endpoint_with_fewer_in_flight_at_equal_latency() -> None:
    e = eps(1, 1, 1)
    for x in e:
        x.sample(0.002, 100.0)
    e[0].active = 5
    lb = PeakEwma(e, opts(clock=Clock(100.0)))
    assert e[0] not in {lb.pick() for _ in range(500)}


@pytest.mark.parametrize("policy", ["random", "round_robin", "least_request", "peak_ewma"])
def test_slow_start_ramps_a_new_endpoint_from_10_percent_to_its_weight(policy: str) -> None:
    clock = Clock(100.0)
    e = eps(1, 1, 1)
    e[2].added = 100.0
    lb = build(policy, e, opts(clock=clock, slow_start=10.0))
    # Random and round robin share by weight: 0.1 / 2.1, then 0.5 / 2.5, then 1 / 3.
    # The P2C balancers divide the load by the weight too: with nothing in flight a ramping
    # endpoint loses every comparison until it is warm (it takes traffic as others load up).
    expected = {"random": (0.048, 0.2), "round_robin": (0.048, 0.2)}.get(policy)
    first = shares(lb, 4000).get(2, 0.0)
    clock.t = 105.0
    mid = shares(lb, 4000).get(2, 0.0)
    clock.t = 111.0
    last = shares(lb, 6000).get(2, 0.0)
    if expected is not None:
        assert first == pytest.approx(expected[0], abs=0.02)
        assert mid == pytest.approx(expected[1], abs=0.03)
    assert first <= mid < last
    assert last == pytest.approx(1 / 3, abs=0.04)


def test_round_robin_goes_back_to_its_fast_path_when_every_ramp_is_over() -> None:
    clock = Clock(100.0)
    e = eps(1, 1)
    e[1].added = 99.0
    lb = RoundRobin(e, opts(clock=clock, slow_start=2.0))
    lb.pick()
    assert lb._weighted
    clock.t = 102.0
    lb.pick()
    assert not lb._weighted


def test_build_knows_every_policy_of_the_contract() -> None:
    for p in ("round_robin", "random", "least_request", "peak_ewma", "ring_hash", "maglev"):
        assert build(p, eps(1, 1), opts()).pick(1) is not None
    with pytest.raises(ValueError, match="unknown lb_policy"):
        build("nope", eps(1))


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
def test_under_steady_load_weights_1_to_3_give_25_percent_within_3_points(policy: str) -> None:
    """32 requests in flight, each finishing after 32 more picks (equal latency): the P2C
    balancers spread in-flight requests by weight, so picks follow the weights."""
    from collections import deque

    e = eps(1, 3)
    for x in e:
        x.sample(0.001, 100.0)
    lb = build(policy, e, opts(clock=Clock(100.0)))
    in_flight: deque[EndpointState] = deque()
    light = 0
    for _ in range(N):
        ep = lb.pick()
        assert ep is not None
        ep.active += 1
        in_flight.append(ep)
        light += ep is e[0]
        if len(in_flight) > 32:
            in_flight.popleft().active -= 1
    assert light / N == pytest.approx(0.25, abs=0.03)
