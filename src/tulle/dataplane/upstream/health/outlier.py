"""Outlier detection: eject an endpoint by what its own requests see (sans-I/O, ADR 0040).

Why passive detection at all: a dead or broken endpoint is noticed by the first few requests
that meet it, long before a probe every few seconds would; ejecting it then keeps the rest of
the run's requests off it.  The rules are Envoy's, in its "split" mode (failures that never
produced a response are counted apart, as local-origin failures, as well as 5xx):

* every try's outcome (`attempt.OutcomeHook`) is `record`ed: a response < 500 resets the
  endpoint's consecutive counters, a 5xx bumps `consecutive_5xx` (and, for 502/503/504,
  `consecutive_gateway_errors`), a failure without a usable response bumps the local-origin
  counter too; a counter reaching its threshold ejects the endpoint at once;
* `tick` runs every `interval_ms`: ejections that are over end, success rates are judged,
  ejection multipliers of endpoints that stayed in shrink by one;
* never more than `max_ejection_percent` of the endpoints are ejected at once (one may always
  be, unless it is 0), so detection alone cannot empty a cluster.

No clock is read here: every call takes `now` (the loop's time), so tests run in virtual time.
An endpoint's combined health (ejection and active probes) lives in `EndpointHealth`, which
pushes it into the balancers' `EndpointState.healthy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from tulle.dataplane.upstream.lb import EndpointState
from tulle.proxyconfig.health import OutlierDetection

IGNORED_FLAGS = frozenset({"DC", "UO"})
"""Outcomes that say nothing about the endpoint: the downstream went away, a local limit."""
GATEWAY_FLAGS = frozenset({"UT"})
"""Failures that are gateway errors but not local-origin (the endpoint took the request)."""
GATEWAY_STATUSES = frozenset({502, 503, 504})

Listener = Callable[["EndpointHealth", str], None]
"""Told (endpoint, reason) on each ejection; reason "" when an ejection ends."""


class EndpointHealth:
    """One endpoint's health in one cluster: outlier counters, ejection, probe results."""

    __slots__ = (
        "c5xx",
        "cgw",
        "check_fails",
        "check_ok",
        "check_passes",
        "clocal",
        "ejected",
        "ejected_at",
        "ejected_until",
        "ejections",
        "ep",
        "ok",
        "reason",
        "total",
    )

    def __init__(self, ep: EndpointState) -> None:
        self.ep = ep
        """The balancers' state object of the snapshot in force (replaced on a swap)."""
        self.c5xx = self.cgw = self.clocal = 0
        self.ok = self.total = 0
        """Successes and outcomes in the current interval (success rate)."""
        self.ejected = False
        self.ejected_at = 0.0
        self.ejected_until = 0.0
        self.ejections = 0
        """The ejection multiplier: ejections so far, less one per interval spent in."""
        self.reason = ""
        """The last ejection's reason."""
        self.check_ok = True
        self.check_passes = self.check_fails = 0

    @property
    def healthy(self) -> bool:
        return not self.ejected and self.check_ok

    def why(self, now: float) -> str:
        """Why the endpoint is out of rotation ("" while it is in), for the admin view."""
        if self.ejected:
            return (f"ejected ({self.reason}) {now - self.ejected_at:.1f}s ago, back in "
                    f"{max(0.0, self.ejected_until - now):.1f}s")
        return "" if self.check_ok else f"failing health checks ({self.check_fails} in a row)"

    def apply(self) -> None:
        """Push the combined health into the balancers' flag."""
        self.ep.healthy = not self.ejected and self.check_ok


class OutlierDetector:
    """One cluster's outlier detection over its `EndpointHealth`s."""

    __slots__ = ("cfg", "endpoints", "listener")

    def __init__(self, cfg: OutlierDetection, listener: Listener | None = None) -> None:
        self.cfg = cfg
        self.endpoints: Sequence[EndpointHealth] = ()
        self.listener = listener

    def record(self, eh: EndpointHealth, status: int, flag: str, now: float) -> None:
        """One try's outcome on `eh`'s endpoint."""
        if flag:
            if flag in IGNORED_FLAGS:
                return
            eh.total += 1
            eh.c5xx += 1
            eh.cgw += 1
            if flag not in GATEWAY_FLAGS:
                eh.clocal += 1
        elif status >= 500:
            eh.total += 1
            eh.c5xx += 1
            eh.clocal = 0
            if status in GATEWAY_STATUSES:
                eh.cgw += 1
            else:
                eh.cgw = 0
        else:
            eh.total += 1
            eh.ok += 1
            eh.c5xx = eh.cgw = eh.clocal = 0
            return
        if eh.ejected:
            return
        cfg = self.cfg
        if cfg.consecutive_local_origin_failures and (
                eh.clocal >= cfg.consecutive_local_origin_failures):
            self._eject(eh, "consecutive_local_origin_failures", now)
        elif cfg.consecutive_gateway_errors and eh.cgw >= cfg.consecutive_gateway_errors:
            self._eject(eh, "consecutive_gateway_errors", now)
        elif cfg.consecutive_5xx and eh.c5xx >= cfg.consecutive_5xx:
            self._eject(eh, "consecutive_5xx", now)

    def may_eject(self) -> bool:
        pct = self.cfg.max_ejection_percent
        if pct == 0:
            return False
        out = sum(1 for e in self.endpoints if e.ejected)
        return out == 0 or (out + 1) * 100 <= pct * len(self.endpoints)

    def _eject(self, eh: EndpointHealth, reason: str, now: float) -> bool:
        eh.c5xx = eh.cgw = eh.clocal = 0
        if not self.may_eject():
            return False
        cfg = self.cfg
        eh.ejections += 1
        eh.ejected = True
        eh.ejected_at = now
        eh.ejected_until = now + min(cfg.base_ejection_time_ms * eh.ejections,
                                     max(cfg.max_ejection_time_ms,
                                         cfg.base_ejection_time_ms)) / 1000
        eh.reason = reason
        eh.apply()
        if self.listener is not None:
            self.listener(eh, reason)
        return True

    def tick(self, now: float) -> None:
        """The interval's work: end ejections that are over, judge success rates."""
        for eh in self.endpoints:
            if eh.ejected:
                if now >= eh.ejected_until:
                    eh.ejected = False
                    eh.ejected_until = 0.0
                    eh.apply()
                    if self.listener is not None:
                        self.listener(eh, "")
            elif eh.ejections:
                eh.ejections -= 1
        sr = self.cfg.success_rate
        if sr is not None:
            judged = [e for e in self.endpoints if e.total >= sr.request_volume]
            if len(judged) >= sr.minimum_hosts:
                rates = [e.ok / e.total for e in judged]
                mean = sum(rates) / len(rates)
                sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
                floor = mean - sd * sr.stdev_factor / 1000
                for e, r in sorted(zip(judged, rates, strict=True), key=lambda x: x[1]):
                    if r < floor and not e.ejected:
                        self._eject(e, "success_rate", now)
        for eh in self.endpoints:
            eh.ok = eh.total = 0
