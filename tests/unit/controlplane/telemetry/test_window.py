"""The sliding window: what is kept, for how long, and what is refused."""

from __future__ import annotations

import msgspec
import pytest

from tulle.controlplane.telemetry.window import ReportError, StatsWindow
from tulle.proxyconfig.framing import frame as encode_frame
from tulle.proxyconfig.stats import MAX_STATS_ROWS, StatsRow
from tulle.proxyconfig.stream import FrameDecoder, StatsReport, encode

ME = {"shop/a-0"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(requests: int = 10, failures: int = 0, workload: str = "shop/a-0",
           interval_ms: int = 1000, service: str = "shop/api", **kw: object) -> StatsReport:
    row = StatsRow(direction="outbound", workload=workload, service=service,
                   requests=requests, failures=failures, **kw)  # type: ignore[arg-type]
    return StatsReport(interval_ms=interval_ms, rows=[row])


def test_reports_age_out_of_the_window_and_of_retention() -> None:
    clock = Clock()
    win = StatsWindow(retention=60, clock=clock)
    for _ in range(10):
        win.ingest("shop/a-0", report(), ME)
        clock.now += 1
    assert len(win.recent(5)["shop/a-0"]) == 5
    assert len(win.recent(60)["shop/a-0"]) == 10
    clock.now += 100
    win.ingest("shop/b-0", report(workload="shop/b-0"), {"shop/b-0"})
    assert "shop/a-0" not in win.recent(600)  # past retention: dropped with its proxy
    assert len(win) == 1


def test_rows_come_back_as_they_were_sent() -> None:
    win = StatsWindow(clock=Clock())
    sent = report(requests=7, failures=2, buckets=[(0, 3), (19, 4)], latency_sum_ms=12.345,
                  tcp_open=3)
    win.ingest("shop/a-0", sent, ME)
    win.ingest("shop/a-0", sent, ME)
    (first, second) = win.recent(1)["shop/a-0"]
    for rec in (first, second):
        (row,) = rec.rows()
        assert row.key == ("outbound", "shop/a-0", "shop/api", "")
        assert (row.requests, row.failures, row.tcp_open) == (7, 2, 3)
        assert row.buckets == [(0, 3), (19, 4)] and row.latency_sum_ms == 12.345
    assert first.keys is second.keys and len(first.keys) == 1  # one key table per proxy


def test_a_proxy_keeps_a_bounded_number_of_reports() -> None:
    clock = Clock()
    win = StatsWindow(retention=2, clock=clock)  # at most 2 s / 0.2 s + 2 = 12 reports
    for _ in range(1000):
        win.ingest("shop/a-0", report(), ME)
    assert len(win.recent(2)["shop/a-0"]) == 12


@pytest.mark.parametrize(("bad", "reason"), [
    (report(workload="shop/other-0"), "rows[0].workload: 'shop/other-0' is not a workload"),
    (report(requests=1, failures=2), "failures <= requests"),
    (report(requests=-1), "counts must be >= 0"),
    (report(requests=1, buckets=[(0, 5)]), "more observations than requests"),
    (report(interval_ms=0), "interval_ms: 0 out of range"),
    (report(requests=5, buckets=[(99, 1)]), "a bucket index out of range"),
    (report(requests=5, latency_sum_ms=-1.0), "counts out of range"),
    (StatsReport(interval_ms=1000, rows=[report().rows[0]] * (MAX_STATS_ROWS + 1)),
     "more than"),
    # ADR 0099: what `tulle stat` prints and the dashboard draws is a Service's name only.
    (report(service="shop/x\x1b]52;c;cm0K\x07"), "rows[0].service: not a Service's"),
    (report(service="shop/b-0->q"), "rows[0].service: not a Service's"),
    (report(service="shop"), "rows[0].service: not a Service's"),
    (report(service="shop/" + "a" * 64), "rows[0].service: not a Service's"),
    (report(parent="Shop/api"), "rows[0].parent: not a Service's"),
])
def test_bad_reports_are_refused_whole_with_the_reason(bad: StatsReport, reason: str) -> None:
    win = StatsWindow(clock=Clock())
    with pytest.raises(ReportError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        win.ingest("shop/a-0", bad, ME)
    assert win.refused == 1 and win.recent(600) == {}


def test_a_window_shorter_than_the_interval_holds_the_latest_report_while_it_is_current() -> None:
    """Reports every 5 s and `--window 2s`: the last interval's figures, not nothing for
    three seconds of every five; a proxy that stopped reporting leaves once the next report
    is overdue."""
    clock = Clock()
    win = StatsWindow(clock=clock)
    for _ in range(3):
        clock.now += 5
        win.ingest("shop/a-0", report(interval_ms=5000), ME)
    clock.now += 4
    assert len(win.recent(2)["shop/a-0"]) == 1
    assert len(win.recent(12)["shop/a-0"]) == 2  # a longer window is the window
    clock.now += 3.6  # 7.6 s: the next report is overdue
    assert "shop/a-0" not in win.recent(2)


def test_failed_grpc_calls_are_failures_and_bounded_by_the_requests() -> None:
    """ADR 0112: a row's failures are its HTTP failures and its failed gRPC calls."""
    win = StatsWindow(clock=Clock())
    win.ingest("shop/a-0", report(requests=10, failures=2, grpc_failures=5), ME)
    (rec,) = win.recent(1)["shop/a-0"]
    (row,) = rec.rows()
    assert (row.requests, row.failures) == (10, 7)
    for bad in (report(requests=10, failures=6, grpc_failures=5),
                report(requests=10, grpc_failures=-1)):
        with pytest.raises(ReportError, match="grpc_failures <= requests"):
            win.ingest("shop/a-0", bad, ME)


class _OldRow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`StatsRow` as a control plane from before ADR 0112 decodes it."""

    direction: str
    workload: str
    service: str = ""
    requests: int = 0
    failures: int = 0
    buckets: list[tuple[int, int]] = msgspec.field(default_factory=list)
    latency_sum_ms: float = 0.0
    tcp_open: int = 0
    parent: str = ""


class _OldReport(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="stats"):
    interval_ms: int
    rows: list[_OldRow] = msgspec.field(default_factory=list)


def test_each_side_takes_the_others_reports() -> None:
    """Compatible both ways without a new protocol version: an older control plane decodes a
    new report and ignores `grpc_failures` (its failed calls are successes there, as they
    were); this one takes an older proxy's report, which has no such key, as it was."""
    new = report(requests=10, failures=2, grpc_failures=5)
    frame = encode(new)[4:]  # the JSON after the frame's length
    (old_row,) = msgspec.json.decode(frame, type=_OldReport).rows
    assert (old_row.requests, old_row.failures) == (10, 2)
    legacy = msgspec.json.encode(_OldReport(interval_ms=1000, rows=[_OldRow(
        direction="outbound", workload="shop/a-0", service="shop/api", requests=4,
        failures=1)]))
    assert b"grpc_failures" not in legacy
    msg = FrameDecoder().feed(encode_frame(legacy))[0]
    assert isinstance(msg, StatsReport)
    win = StatsWindow(clock=Clock())
    win.ingest("shop/a-0", msg, ME)
    (rec,) = win.recent(1)["shop/a-0"]
    (row,) = rec.rows()
    assert (row.requests, row.failures) == (4, 1)
