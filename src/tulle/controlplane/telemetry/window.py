"""The proxies' traffic reports, kept for a bounded time: the sliding window of `tulle stat`.

Why per proxy and per report: a report's counts cover the interval the proxy measured, so the
rate of an edge is its requests over the time that proxy's reports in the window cover (a
proxy that joined ten seconds ago is not averaged over thirty).  Memory is bounded twice:
reports older than `retention` are dropped at every ingest, and each proxy keeps at most
`retention / min interval` of them.  A report is checked before it is kept: a proxy speaks only
for the workloads its stream was admitted for, and counts must be sane; a bad report is
dropped whole and counted, the stream stays up (ADR 0046).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

from tulle.proxyconfig.stats import MAX_STATS_ROWS, STATS_MIN_INTERVAL_MS, StatsRow
from tulle.proxyconfig.stream import StatsReport

DEFAULT_RETENTION = 600.0
"""Seconds of reports kept: the longest `--window` `tulle stat` can ask for."""


@dataclass(frozen=True, slots=True)
class Received:
    at: float
    """When it arrived (the control plane's monotonic clock)."""
    interval: float
    """Seconds its counts cover."""
    rows: tuple[StatsRow, ...]


class ReportError(ValueError):
    pass


def check(report: StatsReport, workloads: Collection[str]) -> None:
    """Raise ReportError naming the first fault of a report from a proxy fronting
    `workloads` (`namespace/name`)."""
    if not 0 < report.interval_ms <= 24 * 3_600_000:
        raise ReportError(f"interval_ms: {report.interval_ms} out of range")
    if len(report.rows) > MAX_STATS_ROWS:
        raise ReportError(f"rows: {len(report.rows)} rows, more than {MAX_STATS_ROWS}")
    for i, r in enumerate(report.rows):
        if r.workload not in workloads:
            raise ReportError(f"rows[{i}].workload: {r.workload!r} is not a workload this "
                              f"stream fronts")
        if r.requests < 0 or r.failures < 0 or r.tcp_open < 0 or r.failures > r.requests:
            raise ReportError(f"rows[{i}]: counts must be >= 0 and failures <= requests")
        if sum(c for _, c in r.buckets) > r.requests or any(c < 0 for _, c in r.buckets):
            raise ReportError(f"rows[{i}].buckets: more observations than requests")


class StatsWindow:
    def __init__(self, retention: float = DEFAULT_RETENTION, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention
        self.clock = clock
        self._max_reports = int(retention * 1000 / STATS_MIN_INTERVAL_MS) + 2
        self._by_proxy: dict[str, deque[Received]] = {}
        self.accepted = 0
        self.refused = 0

    def ingest(self, proxy: str, report: StatsReport, workloads: Collection[str]) -> None:
        """Keep `report` from `proxy` (its stream's first workload) or raise ReportError."""
        try:
            check(report, workloads)
        except ReportError:
            self.refused += 1
            raise
        now = self.clock()
        q = self._by_proxy.get(proxy)
        if q is None:
            q = self._by_proxy[proxy] = deque(maxlen=self._max_reports)
        q.append(Received(now, report.interval_ms / 1000, tuple(report.rows)))
        self.accepted += 1
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.retention
        for proxy in [p for p, q in self._by_proxy.items() if q and q[-1].at < horizon]:
            del self._by_proxy[proxy]
        for q in self._by_proxy.values():
            while q and q[0].at < horizon:
                q.popleft()

    def recent(self, window: float) -> dict[str, list[Received]]:
        """Each proxy's reports that arrived within the last `window` seconds, oldest first."""
        horizon = self.clock() - window
        out: dict[str, list[Received]] = {}
        for proxy, q in self._by_proxy.items():
            kept = [r for r in q if r.at >= horizon]
            if kept:
                out[proxy] = kept
        return out

    def __len__(self) -> int:
        return len(self._by_proxy)


__all__ = ["DEFAULT_RETENTION", "Received", "ReportError", "StatsWindow", "check"]
