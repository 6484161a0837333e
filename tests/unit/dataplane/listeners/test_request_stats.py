"""`RequestStats.count_grpc`: which gRPC calls `tulle stat` counts as failed beyond the HTTP
rule (ADR 0112), by the golden metrics' rule (`telemetry/grpc_status.call_status`)."""

from __future__ import annotations

import pytest

from tulle.dataplane.listeners.request_stats import AddressedStats, RequestStats
from tulle.dataplane.telemetry.grpc_status import call_status
from tulle.dataplane.telemetry.metrics import ProxyMetrics

KEY = ("outbound", "outbound|80||api.shop")


@pytest.mark.parametrize(("status", "flags", "grpc_status", "failed"), [
    (200, "", "0", False),  # OK on the wire
    (200, "", "14", True),  # UNAVAILABLE in trailers
    (200, "", "5", True),  # NOT_FOUND: any status but OK fails a call (as Linkerd counts)
    (200, "", "", True),  # a 200 without a status (reset after the head): INTERNAL
    (200, "DC", "", True),  # the client cancelled after the head: CANCELLED
    (429, "RL", "8", True),  # a rate limit's local answer: not an HTTP failure, a gRPC one
    (404, "NR", "12", True),  # no route: UNIMPLEMENTED
    (200, "", "99", True),  # outside 0..16: UNKNOWN
    # Already failures by their HTTP status: never counted twice.
    (503, "FI", "7", False),
    (503, "", "", False),
    (0, "DC", "", False),
])
def test_a_call_fails_when_its_status_is_not_ok(status: int, flags: str, grpc_status: str,
                                                failed: bool) -> None:
    m = ProxyMetrics()
    st = RequestStats(m, *KEY)
    st.count(status, flags, 1.0)
    assert st.count_grpc(status, flags, grpc_status) is failed
    got = m.grpc_failed[KEY].value if KEY in m.grpc_failed else 0
    assert got == int(failed)
    # The golden metrics' rule, with the HTTP rule for what it already counts.
    http_failed = status >= 500 or status < 100
    assert (call_status(grpc_status, status, flags) != "0") == (failed or http_failed)


def test_counts_outlive_the_stats_object_and_a_split_counts_under_its_parent_too() -> None:
    """Stats objects are rebuilt with each snapshot; the counts live in the metrics.  A split
    route's calls count in its addressed series too (moved to the parent's row)."""
    m = ProxyMetrics()
    RequestStats(m, *KEY).count_grpc(200, "", "14")
    base = RequestStats(m, *KEY)  # a new snapshot's
    series = m.addressed.series(*KEY, "shop/parent")
    split = AddressedStats(base, series)
    split.count(200, "", 1.0)
    assert split.count_grpc(200, "", "2") is True
    assert split.count_grpc(200, "", "0") is False
    assert m.grpc_failed[KEY].value == 2
    assert (series.requests, series.failures, series.grpc_failures) == (1, 0, 1)
