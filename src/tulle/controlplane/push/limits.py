"""The stream's connection caps and refusal logging, apart from the session logic.

Why: the push server must never take the descriptors the REST API and the store need, and a
flood of refused connections must not become a flood of log lines.  The caps are documented
in the server's docstring (`controlplane/push/server.py`).
"""

from __future__ import annotations

import asyncio
import logging
import resource

log = logging.getLogger("tulle.controlplane.push")


DEFAULT_HELLO_TIMEOUT = 5.0
"""Seconds a new connection has to send its `hello` (`--stream-hello-timeout`)."""
DEFAULT_MAX_CONNECTIONS = 10_000
"""Open stream connections, proxies and not-yet-hello'd ones together
(`--stream-max-connections`; 0: no limit)."""
DEFAULT_MAX_PENDING_HELLOS = 256
"""Open connections that have not said hello yet (`--stream-max-pending-hellos`; 0: no cap of
their own, only `max_connections`)."""
STREAM_FD_SHARE = 0.5
"""At most this share of the soft RLIMIT_NOFILE is used by stream connections in all."""
PENDING_FD_SHARE = 0.25
"""At most this share of the soft RLIMIT_NOFILE is used by connections before their hello."""


def soft_fd_limit() -> int:
    """The soft RLIMIT_NOFILE; 0 when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def effective_caps(max_connections: int, max_pending_hellos: int,
                   fd_limit: int) -> tuple[int, int]:
    """(connections, pending hellos) caps in force for a soft descriptor limit `fd_limit`
    (0: unlimited); 0 in the result means no cap."""
    total = max_connections
    pending = max_pending_hellos
    if fd_limit:
        share = max(1, int(fd_limit * STREAM_FD_SHARE))
        total = min(total, share) if total else share
        pshare = max(1, int(fd_limit * PENDING_FD_SHARE))
        pending = min(pending, pshare) if pending else pshare
    if total and pending:
        pending = min(pending, total)
    return total, pending


REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two warnings about refused or dropped connections (each says how many)."""


class _Throttled:
    """A warning about one kind of refusal, logged at most once per `REFUSAL_LOG_INTERVAL`
    with how many happened since the last one: a flood of connections must not become a
    flood of log lines."""

    __slots__ = ("_at", "_unlogged", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._unlogged = 0
        self._at: float | None = None

    def __call__(self, peer: str, detail: str) -> None:
        self._unlogged += 1
        now = asyncio.get_running_loop().time()
        if self._at is None or now - self._at >= REFUSAL_LOG_INTERVAL:
            log.warning("proxy stream: %s: %d connection(s) (latest from %s: %s)", self._what,
                        self._unlogged, peer, detail)
            self._unlogged = 0
            self._at = now


NEW_REFUSAL_LINES = 10
"""Lines about refused credentials for a workload and reason not logged before, per
`REFUSAL_LOG_INTERVAL`; the rest are summed up by a `_Throttled` line."""


class _Budget:
    """At most `n` per `REFUSAL_LOG_INTERVAL`: what a peer that needs no credential to invent
    a new workload name per hello may still make us log."""

    __slots__ = ("_at", "_left", "_n")

    def __init__(self, n: int = NEW_REFUSAL_LINES) -> None:
        self._n = n
        self._left = n
        self._at: float | None = None

    def take(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._at is None or now - self._at >= REFUSAL_LOG_INTERVAL:
            self._at, self._left = now, self._n
        if self._left <= 0:
            return False
        self._left -= 1
        return True
