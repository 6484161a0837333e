"""The stream's side of `tulle stat` (ADR 0046): ask a proxy for reports, take them in.

Only a proxy that announced the feature `stats-reports` is asked (a proxy from before it could
not decode `StatsRequest`), and a proxy only reports once asked (a control plane from before it
could not decode `StatsReport`).  A report is checked against the workloads the stream was
admitted for; a bad one is dropped and logged (once per stream), never ends the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tulle.controlplane.push.cache import ProxyStatus
from tulle.controlplane.telemetry.window import ReportError, StatsWindow
from tulle.proxyconfig.stream import StatsReport, StatsRequest

log = logging.getLogger("tulle.controlplane.push")

FEATURE = "stats-reports"


def stats_request(window: StatsWindow | None, interval: float,
                  features: Sequence[str]) -> StatsRequest | None:
    """What to send after the hello; None: no reports from this proxy.  It says this control
    plane takes `Draining` (ADR 0092): a proxy asked for reports keeps reporting through its
    drain."""
    if window is None or interval <= 0 or FEATURE not in features:
        return None
    return StatsRequest(interval_ms=max(1, round(interval * 1000)), draining=True)


def take_report(window: StatsWindow | None, statuses: Sequence[ProxyStatus],
                report: StatsReport, warned: bool, period: float = 0.0) -> bool:
    """Keep `report` (`period`: the seconds between the reports asked of this proxy; 0: read
    from the report); returns whether a refusal has been logged on this stream."""
    if window is None or not statuses:
        return warned  # not asked for: ignored (an old proxy would never send one)
    workloads = {f"{s.namespace}/{s.name}" for s in statuses}
    first = statuses[0]
    try:
        window.ingest(f"{first.namespace}/{first.name}", report, workloads, period)
    except ReportError as exc:
        if not warned:
            log.warning("proxy %s/%s: stats report dropped: %s", first.namespace, first.name,
                        exc)
        return True
    return warned


__all__ = ["FEATURE", "stats_request", "take_report"]
