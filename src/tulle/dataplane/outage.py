"""How the agent says the control plane is gone: one line when it goes, not one per retry.

Decision 4 of DESIGN.md keeps the proxy serving without its control plane, so an outage is
news, not an error storm: the first failed attempt is one WARNING naming the address, the
reason, the config still in force and the retry schedule; further attempts log at DEBUG (an
INFO line when the reason changes, and a reminder every `REMIND_S`); getting back is one INFO
line with how long it lasted.  A stopping control plane and a refused connection read the same.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("tulle.agent")

REMIND_S = 300.0
"""While the control plane stays away, a reminder this often (seconds)."""


class OutageLog:
    def __init__(self, backoff_initial: float, backoff_max: float, addresses: int) -> None:
        self.schedule = (f"retrying with exponential backoff from {backoff_initial:g} s up to "
                         f"{backoff_max:g} s, full jitter"
                         + (f", across {addresses} addresses" if addresses > 1 else ""))
        self.since: float | None = None
        self.reason = ""
        self.reminded = 0.0
        self.attempts = 0

    def failed(self, where: str, reason: str, serving: str | None) -> None:
        """An attempt failed (or a session ended) with `reason`."""
        now = time.monotonic()
        self.attempts += 1
        if self.since is None:
            self.since = self.reminded = now
            self.reason = reason
            log.warning("control plane %s unreachable: %s; %s; %s", where, reason,
                        f"serving config {serving}" if serving else "no config yet",
                        self.schedule)
            return
        if reason != self.reason:
            self.reason = reason
            log.info("control plane %s: still unreachable: %s", where, reason)
        elif now - self.reminded >= REMIND_S:
            self.reminded = now
            log.info("control plane still unreachable after %.0f s and %d attempts (last: %s)",
                     now - self.since, self.attempts, reason)
        else:
            log.debug("control plane %s: %s", where, reason)

    def back(self, where: str) -> None:
        """A session got going again."""
        if self.since is not None:
            log.info("control plane %s: connected again after %.1f s (%d attempts)", where,
                     time.monotonic() - self.since, self.attempts)
        self.since = None
        self.attempts = 0
        self.reason = ""


__all__ = ["REMIND_S", "OutageLog"]
