"""Outlier detection in virtual time: every rule ejects, ejections end, grow and are capped."""

from __future__ import annotations

from tulle.dataplane.upstream.health.outlier import EndpointHealth, OutlierDetector
from tulle.dataplane.upstream.lb import EndpointState, RoundRobin
from tulle.proxyconfig.health import OutlierDetection, SuccessRate


def _cluster(n: int, **kw: object) -> tuple[OutlierDetector, list[EndpointHealth], list[str]]:
    events: list[str] = []
    det = OutlierDetector(OutlierDetection(**kw),  # type: ignore[arg-type]
                          lambda eh, reason: events.append(f"{eh.ep.port}:{reason}"))
    ehs = [EndpointHealth(EndpointState("127.0.0.1", 8000 + i)) for i in range(n)]
    det.endpoints = ehs
    return det, ehs, events


def test_five_connect_failures_in_a_row_eject_at_once_and_the_balancer_skips_it() -> None:
    det, ehs, events = _cluster(3)
    lb = RoundRobin([e.ep for e in ehs])
    for _ in range(4):
        det.record(ehs[0], 503, "UF", 1.0)
    assert not ehs[0].ejected
    det.record(ehs[0], 503, "UF", 1.0)
    assert ehs[0].ejected and ehs[0].ep.healthy is False
    assert events == ["8000:consecutive_local_origin_failures"]
    assert {lb.pick().port for _ in range(10)} == {8001, 8002}  # type: ignore[union-attr]


def test_a_success_in_between_resets_the_count() -> None:
    det, ehs, _ = _cluster(3)
    for _ in range(20):
        for _ in range(4):
            det.record(ehs[0], 500, "", 0.0)
        det.record(ehs[0], 200, "", 0.0)
    assert not ehs[0].ejected


def test_consecutive_5xx_and_gateway_errors_eject_with_their_reason() -> None:
    det, ehs, events = _cluster(20, consecutive_gateway_errors=3, consecutive_5xx=4)
    for _ in range(3):
        det.record(ehs[0], 503, "", 0.0)
    for _ in range(3):
        det.record(ehs[1], 500, "", 0.0)
    assert ehs[0].ejected and not ehs[1].ejected
    det.record(ehs[1], 500, "", 0.0)
    assert events == ["8000:consecutive_gateway_errors", "8001:consecutive_5xx"]


def test_a_timeout_is_a_gateway_error_not_a_local_origin_failure() -> None:
    det, ehs, events = _cluster(3, consecutive_5xx=0, consecutive_gateway_errors=0)
    for _ in range(10):
        det.record(ehs[0], 504, "UT", 0.0)
    assert not ehs[0].ejected
    det2, ehs2, events2 = _cluster(3, consecutive_5xx=0, consecutive_local_origin_failures=0)
    for _ in range(5):
        det2.record(ehs2[0], 504, "UT", 0.0)
    assert events2 == ["8000:consecutive_gateway_errors"]


def test_downstream_resets_and_local_overflow_say_nothing_about_the_endpoint() -> None:
    det, ehs, _ = _cluster(3)
    for _ in range(50):
        det.record(ehs[0], 0, "DC", 0.0)
        det.record(ehs[0], 503, "UO", 0.0)
    assert not ehs[0].ejected and ehs[0].total == 0


def test_ejection_ends_at_the_interval_after_its_time_and_grows_with_repeats() -> None:
    det, ehs, events = _cluster(3, interval_ms=10_000, base_ejection_time_ms=30_000,
                                max_ejection_time_ms=70_000)
    eh = ehs[0]

    def fail(now: float) -> None:
        for _ in range(5):
            det.record(eh, 503, "UF", now)

    fail(0.0)
    assert eh.ejected_until == 30.0
    det.tick(20.0)
    assert eh.ejected
    det.tick(30.0)
    assert not eh.ejected and eh.ep.healthy
    fail(31.0)  # second ejection: twice as long
    assert eh.ejected_until == 91.0
    det.tick(91.0)
    fail(92.0)  # third: 90 s, capped at 70
    assert eh.ejected_until == 162.0
    det.tick(162.0)
    for t in range(1, 4):  # three intervals in: the multiplier shrinks back to 0
        det.tick(162.0 + 10 * t)
    assert eh.ejections == 0
    fail(200.0)
    assert eh.ejected_until == 230.0
    assert events.count("8000:") == 3


def test_max_ejection_percent_keeps_the_cluster_from_emptying() -> None:
    det, ehs, _ = _cluster(3)  # 10% of 3: one may be ejected (always one), not two
    for eh in ehs:
        for _ in range(5):
            det.record(eh, 503, "UF", 0.0)
    assert [e.ejected for e in ehs] == [True, False, False]
    det20, ehs20, _ = _cluster(20, max_ejection_percent=10)
    for eh in ehs20:
        for _ in range(5):
            det20.record(eh, 503, "UF", 0.0)
    assert sum(e.ejected for e in ehs20) == 2
    det0, ehs0, _ = _cluster(3, max_ejection_percent=0)
    for _ in range(5):
        det0.record(ehs0[0], 503, "UF", 0.0)
    assert not ehs0[0].ejected


def test_success_rate_ejects_the_endpoint_far_below_the_mean() -> None:
    det, ehs, events = _cluster(6, consecutive_5xx=0, consecutive_gateway_errors=0,
                                consecutive_local_origin_failures=0, max_ejection_percent=50,
                                success_rate=SuccessRate(minimum_hosts=5, request_volume=100,
                                                         stdev_factor=1900))
    for i, eh in enumerate(ehs):
        for n in range(200):
            bad = (n % 2 == 0) if i == 0 else (n % 100 == 0)  # 50% vs 99% success
            det.record(eh, 500 if bad else 200, "", 1.0)
    det.tick(10.0)
    assert events == ["8000:success_rate"]
    for eh in ehs[1:]:  # too few requests in the next interval: nobody is judged
        det.record(eh, 500, "", 11.0)
    det.tick(20.0)
    assert events == ["8000:success_rate"]


def test_why_says_what_keeps_an_endpoint_out() -> None:
    det, ehs, _ = _cluster(3)
    for _ in range(5):
        det.record(ehs[0], 503, "UF", 100.0)
    assert ehs[0].why(112.0) == ("ejected (consecutive_local_origin_failures) 12.0s ago, "
                                 "back in 18.0s")
    ehs[1].check_ok, ehs[1].check_fails = False, 3
    assert ehs[1].why(0.0) == "failing health checks (3 in a row)"
    assert ehs[2].why(0.0) == ""
