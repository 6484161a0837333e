"""The retry budget on virtual time: 20% of requests plus a floor per second over a window."""

from __future__ import annotations

from tulle.dataplane.upstream.budget import Budget
from tulle.proxyconfig.retry import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def retries_allowed(b: Budget, limit: int = 10_000) -> int:
    n = 0
    while n < limit and b.withdraw():
        n += 1
    return n


def test_twenty_percent_of_requests_plus_the_reserve() -> None:
    clock = Clock()
    b = Budget(RetryBudget(percent=20, min_retries_per_second=10, ttl_ms=10_000), clock)
    for _ in range(1000):
        b.deposit()
    assert retries_allowed(b) == 200 + 100


def test_without_a_reserve_no_traffic_means_no_retries() -> None:
    b = Budget(RetryBudget(percent=20, min_retries_per_second=0), Clock())
    assert not b.withdraw()
    for _ in range(10):
        b.deposit()
    assert retries_allowed(b) == 2


def test_requests_age_out_of_the_window() -> None:
    clock = Clock()
    b = Budget(RetryBudget(percent=50, min_retries_per_second=0, ttl_ms=10_000), clock)
    for _ in range(100):
        b.deposit()
    b.flush()  # (dated now: see the pending test below for batches dated late)
    clock.t += 5
    assert b.deposited == 100
    clock.t += 5.0  # ten seconds later: the deposits' slot has left the window
    assert retries_allowed(b) == 0
    assert b.deposited == 0


def test_retries_age_out_too_and_the_budget_refills() -> None:
    clock = Clock()
    b = Budget(RetryBudget(percent=20, min_retries_per_second=0, ttl_ms=10_000), clock)
    for second in range(30):  # steady 100 requests/s, retrying as much as allowed
        clock.t = 1000.0 + second
        for _ in range(100):
            b.deposit()
        retries_allowed(b)
        assert b.withdrawn <= 0.2 * b.deposited
    # at steady state: 20% of the last 10 s of requests
    assert b.deposited == 1000 and b.withdrawn == 200


def test_a_long_pause_clears_everything_at_once() -> None:
    clock = Clock()
    b = Budget(RetryBudget(percent=20, min_retries_per_second=1), clock)
    for _ in range(100):
        b.deposit()
    retries_allowed(b)
    clock.t += 3600
    b.deposit()
    b.flush()
    assert (b.deposited, b.withdrawn) == (1, 0)


def test_a_clock_that_goes_back_counts_into_the_current_slot() -> None:
    clock = Clock()
    b = Budget(RetryBudget(percent=100, min_retries_per_second=0), clock)
    b.deposit()
    b.flush()
    clock.t -= 50
    b.deposit()
    b.flush()
    assert b.deposited == 2 and retries_allowed(b) == 2


def test_a_new_window_starts_afresh_other_parameters_keep_the_counts() -> None:
    clock = Clock()
    b = Budget(None, clock)
    for _ in range(50):
        b.deposit()
    b.configure(RetryBudget(percent=50, min_retries_per_second=0))
    assert retries_allowed(b) == 25
    b.configure(RetryBudget(percent=50, min_retries_per_second=0, ttl_ms=20_000))
    assert (b.deposited, b.withdrawn) == (0, 0)


def test_pending_requests_are_dated_at_most_one_flush_late() -> None:
    """The request path only counts; a batch is dated when it is flushed (every 64 requests
    or at the next retry): it leaves the window late, never early."""
    clock = Clock()
    b = Budget(RetryBudget(percent=20, min_retries_per_second=0, ttl_ms=10_000), clock)
    for _ in range(63):
        b.deposit()
    assert (b.pending, b.deposited) == (63, 0)
    b.deposit()  # the 64th flushes
    assert (b.pending, b.deposited) == (0, 64)
    for _ in range(10):
        b.deposit()
    clock.t += 10  # the first 64 leave the window; the 10 pending are dated now
    assert retries_allowed(b) == 2 and b.deposited == 10


def test_a_swap_keeps_the_clusters_budget_and_its_counts_with_new_parameters() -> None:
    from tulle.dataplane.telemetry.metrics import ProxyMetrics
    from tulle.dataplane.upstream.cluster import ClusterManager
    from tulle.proxyconfig.model import Cluster, Endpoint, Settings

    m = ClusterManager(ProxyMetrics())
    ep = [Endpoint(address="127.0.0.1", port=1)]
    m.commit(m.prepare([Cluster(name="c", endpoints=ep)], Settings()))
    budget = m.clusters["c"].limits.budget
    assert (budget.ratio, budget.reserve) == (0.2, 100.0)  # on by default
    for _ in range(10):
        budget.deposit()
    budget.flush()
    changed = Cluster(name="c", endpoints=ep, retry_budget=RetryBudget(percent=50))
    m.commit(m.prepare([changed], Settings()))
    assert m.clusters["c"].limits.budget is budget  # carried over by name
    assert (budget.ratio, budget.deposited) == (0.5, 10)
