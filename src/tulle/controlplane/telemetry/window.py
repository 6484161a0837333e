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

import re
import time
from array import array
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from tulle.api.fields import DNS1123_LABEL_RE
from tulle.proxyconfig.stats import (
    DURATION_BUCKETS_MS,
    MAX_STATS_ROWS,
    STATS_MIN_INTERVAL_MS,
    StatsRow,
)
from tulle.proxyconfig.stream import StatsReport

DEFAULT_RETENTION = 600.0
"""Seconds of reports kept: the longest `--window` `tulle stat` can ask for."""
LATEST_REACH = 1.5
"""A proxy's latest report stays in every window for this many of its intervals (the next one
is due after one; the half is for its delivery)."""


RowKey = tuple[str, str, str, str]
"""(direction, workload, service, parent) of a `StatsRow`."""


@dataclass(frozen=True, slots=True)
class Row:
    key: RowKey
    requests: int
    failures: int
    """HTTP failures and failed gRPC calls together (`StatsRow.grpc_failures`, ADR 0112)."""
    tcp_open: int
    latency_sum_ms: float
    buckets: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Received:
    """One report, packed: its rows as one array of integers (the row's key as an index into
    its proxy's key table, the counts, latency in microseconds, then `[index, count]` pairs),
    about a fifth of the memory of the decoded rows (bench/micro_stat.py)."""

    at: float
    """When it arrived (the control plane's monotonic clock)."""
    interval: float
    """Seconds its counts cover."""
    period: float
    """Seconds until its proxy's next report is due: the interval the control plane asked
    for, not guessed from the reports (a stopping proxy's last one, or the first after a
    reconnect, covers less or more)."""
    data: array[int]
    keys: list[RowKey]
    """The proxy's key table (shared by its reports; only appended to)."""

    def rows(self) -> Iterator[Row]:
        d, keys, i, n = self.data, self.keys, 0, len(self.data)
        while i < n:
            nb = d[i + 5]
            pairs = [(d[j], d[j + 1]) for j in range(i + 6, i + 6 + 2 * nb, 2)]
            yield Row(keys[d[i]], d[i + 1], d[i + 2], d[i + 3], d[i + 4] / 1000, pairs)
            i += 6 + 2 * nb


class _Proxy:
    __slots__ = ("index", "keys", "reports")

    def __init__(self, maxlen: int) -> None:
        self.keys: list[RowKey] = []
        self.index: dict[RowKey, int] = {}
        self.reports: deque[Received] = deque(maxlen=maxlen)

    def pack(self, rows: list[StatsRow]) -> array[int]:
        if len(self.keys) > 4 * MAX_STATS_ROWS:  # a proxy cycling through names: start over
            self.keys, self.index = [], {}
            self.reports.clear()
        out = array("q")
        for r in rows:
            key = (r.direction, r.workload, r.service, r.parent)
            k = self.index.get(key)
            if k is None:
                k = self.index[key] = len(self.keys)
                self.keys.append(key)
            # A failed gRPC call is a failure (ADR 0112); a proxy from before it sends none.
            out.extend((k, r.requests, r.failures + r.grpc_failures, r.tcp_open,
                        round(r.latency_sum_ms * 1000), len(r.buckets)))
            for i, c in r.buckets:
                out.extend((i, c))
        return out


class ReportError(ValueError):
    pass


def _service_name(value: str) -> bool:
    """A row's `service` / `parent`: `namespace/name`, each a DNS-1123 label (what a
    Service's namespace and name are).  Anything else a proxy reports is refused: it is
    printed by `tulle stat` and drawn by the dashboard (a name carrying terminal escapes or
    `->` was, attack audit, ADR 0099)."""
    ns, sep, name = value.partition("/")
    return bool(sep) and all(len(part) <= 63 and re.fullmatch(DNS1123_LABEL_RE, part)
                             for part in (ns, name))


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
        for what, name in (("service", r.service), ("parent", r.parent)):
            if name and not _service_name(name):
                raise ReportError(f"rows[{i}].{what}: not a Service's namespace/name")
        if (r.requests < 0 or r.failures < 0 or r.grpc_failures < 0 or r.tcp_open < 0
                or r.failures + r.grpc_failures > r.requests):
            raise ReportError(f"rows[{i}]: counts must be >= 0 and failures + grpc_failures "
                              f"<= requests")
        if sum(c for _, c in r.buckets) > r.requests or any(c < 0 for _, c in r.buckets):
            raise ReportError(f"rows[{i}].buckets: more observations than requests")
        if any(not 0 <= b <= len(DURATION_BUCKETS_MS) for b, _ in r.buckets):
            raise ReportError(f"rows[{i}].buckets: a bucket index out of range")
        if not 0 <= r.latency_sum_ms < 1e12 or r.requests > 1 << 40:
            raise ReportError(f"rows[{i}]: counts out of range")


class StatsWindow:
    def __init__(self, retention: float = DEFAULT_RETENTION, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention
        self.clock = clock
        self._max_reports = int(retention * 1000 / STATS_MIN_INTERVAL_MS) + 2
        self._by_proxy: dict[str, _Proxy] = {}
        self.accepted = 0
        self.refused = 0

    def ingest(self, proxy: str, report: StatsReport, workloads: Collection[str],
               period: float = 0.0) -> None:
        """Keep `report` from `proxy` (its stream's first workload) or raise ReportError.
        `period`: the seconds between the reports asked of it (0: the report's own
        interval)."""
        try:
            check(report, workloads)
        except ReportError:
            self.refused += 1
            raise
        now = self.clock()
        p = self._by_proxy.get(proxy)
        if p is None:
            p = self._by_proxy[proxy] = _Proxy(self._max_reports)
        interval = report.interval_ms / 1000
        p.reports.append(Received(now, interval, period or interval, p.pack(report.rows),
                                  p.keys))
        self.accepted += 1
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.retention
        for proxy in [k for k, p in self._by_proxy.items()
                      if not p.reports or p.reports[-1].at < horizon]:
            del self._by_proxy[proxy]
        for p in self._by_proxy.values():
            while p.reports and p.reports[0].at < horizon:
                p.reports.popleft()

    def recent(self, window: float) -> dict[str, list[Received]]:
        """Each proxy's reports that arrived within the last `window` seconds, oldest first,
        and at least its latest one while the next is not overdue: a window shorter than the
        proxies' report interval answers with the last interval's figures, not with nothing
        for most of each interval."""
        now = self.clock()
        out: dict[str, list[Received]] = {}
        for proxy, p in self._by_proxy.items():
            if not p.reports:
                continue
            horizon = now - max(window, LATEST_REACH * p.reports[-1].period)
            kept = [r for r in p.reports if r.at >= horizon]
            if kept:
                out[proxy] = kept
        return out

    def __len__(self) -> int:
        return len(self._by_proxy)


__all__ = ["DEFAULT_RETENTION", "Received", "ReportError", "Row", "RowKey", "StatsWindow", "check"]
