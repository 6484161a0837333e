"""One stream per workload on a replica: an admitted stream ends the older one (ADR 0118).

Why: a workload's certificate (or token) admitted any number of streams at once, up to
`--stream-max-connections`, each holding its own TLS connection and, while a push is under
way, its own frame.  A client that reconnected without closing its old streams grew the
control plane by 300-350 KB per stream (1,301 streams: 91 to 545 MB, still 542 MB once the
liveness timeout had closed them all), and 70 that never read held a snapshot each.  A proxy
needs one stream; the newest is the one that matters: a proxy whose network blipped
reconnects while the control plane still holds its half-open old stream, and must be served
at once, not locked out until the liveness timeout notices the old one.  So the newest wins:
the older stream is told why (an `Error`) and closed, and the proxy's status and presence
move to the new session (ADR 0116's writes are by session, so the old stream's end cannot
undo the new one's `Connected`).

A node agent's stream holds each workload it fronts; a stream that takes any of them ends
whichever streams held them.  Per replica only: with several replicas a proxy holds one stream
at a time, and a half-open stream on another replica ends at its liveness timeout as before
(ADR 0040).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from tulle.controlplane.push.cache import ProxyKey

S = TypeVar("S")


class StreamHolders(Generic[S]):
    """Which session holds each workload's stream on this replica."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[ProxyKey, S] = {}

    def take(self, keys: Iterable[ProxyKey], session: S) -> list[S]:
        """`session` now holds `keys`; the sessions that held any of them (each once, in the
        order of `keys`), for the caller to end."""
        older: list[S] = []
        for k in keys:
            held = self._by_key.get(k)
            self._by_key[k] = session
            if held is not None and held is not session and held not in older:
                older.append(held)
        return older

    def release(self, keys: Iterable[ProxyKey], session: S) -> None:
        """`session` ended: the keys it still holds are held by nobody."""
        for k in keys:
            if self._by_key.get(k) is session:
                del self._by_key[k]

    def holder(self, key: ProxyKey) -> S | None:
        return self._by_key.get(key)

    def __len__(self) -> int:
        return len(self._by_key)


__all__ = ["StreamHolders"]
