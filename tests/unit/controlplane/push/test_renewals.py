"""The per-stream renewal budget: a real proxy's pace always passes, a flood does not."""

from __future__ import annotations

from tulle.controlplane.push.renewals import BURST, MAX_REFILL, RenewalBudget

DAY = 24 * 3600.0


def test_a_burst_then_one_per_refill_interval() -> None:
    b = RenewalBudget(1, DAY, now=0.0)
    assert all(b.take(0.0) for _ in range(BURST))
    assert not b.take(0.0)
    assert not b.take(MAX_REFILL - 1)
    assert b.take(MAX_REFILL + 0.5)
    assert not b.take(MAX_REFILL + 0.5)


def test_short_certificates_renew_at_their_half_life_without_running_dry() -> None:
    ttl = 4.0
    b = RenewalBudget(1, ttl, now=0.0)
    assert all(b.take(t * ttl / 2) for t in range(1000))


def test_a_node_gets_a_budget_per_workload() -> None:
    b = RenewalBudget(3, DAY, now=0.0)
    assert sum(b.take(0.0) for _ in range(100)) == 3 * BURST
    # three workloads earn three renewals per interval between them
    assert sum(b.take(MAX_REFILL) for _ in range(100)) == 3


def test_a_renewal_the_control_plane_asked_for_is_never_refused() -> None:
    """Back-to-back rotations emptied the bucket, and the reissue's renewal was refused (the
    stream closed and the rotation moved on without the proxy).  Asked-for renewals are
    granted outside the bucket; asking again does not add up."""
    b = RenewalBudget(2, DAY, now=0.0)
    assert sum(b.take(0.0) for _ in range(100)) == 2 * BURST  # emptied
    b.grant(2)
    b.grant(2)  # the request sent twice: still two
    assert b.take(0.0) and b.take(0.0)
    assert not b.take(0.0)
