"""Log lines about a recurring event, per key, at a bounded rate.

Both planes log things a peer can make happen as often as it likes: a proxy retrying a refused
hello, a client opening connections the outbound policy refuses.  Each kind (key) is logged at
once the first time, so the audit trail shows it; after that at most one line per `every`
seconds, carrying how many were left out since.  The table of keys is bounded (cleared whole
at `max_keys`), so invented keys cannot grow it.  Used by the control plane's stream
(`push/server.py`) and the proxy's transparent listeners (`dataplane/listeners/refusals.py`).
"""

from __future__ import annotations

import logging


class ThrottledByKey:
    """One logger's lines about one event, throttled per key."""

    __slots__ = ("_every", "_log", "_max_keys", "_seen")

    def __init__(self, log: logging.Logger, every: float, max_keys: int = 4096) -> None:
        self._log = log
        self._every = every
        self._max_keys = max_keys
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}
        """Key -> (when it was last logged, occurrences since that were not)."""

    def __call__(self, key: tuple[object, ...], now: float, fmt: str, *args: object) -> None:
        """A warning for `key` at `now` (a monotonic clock, the loop's), unless one was logged
        less than `every` ago: then it is counted for the next line."""
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._every:
            self._seen[key] = (seen[0], seen[1] + 1)
            return
        if seen is None and len(self._seen) >= self._max_keys:
            self._seen.clear()
        since = seen[1] if seen is not None else 0
        self._log.warning(fmt + "%s", *args,
                          f" ({since} more since the last line)" if since else "")
        self._seen[key] = (now, 0)
