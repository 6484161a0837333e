"""The overload guard: downstream connection caps and Envoy-style overload actions.

A proxy that runs out of file descriptors or memory fails everyone, its admin endpoint
included.  `OverloadGuard` keeps it short of that, in the manner of Envoy's overload manager:

* **Monitors** turn a resource into a *pressure* (used / limit):
  open file descriptors against the soft `RLIMIT_NOFILE`, and resident memory (RSS from
  `/proc/self/statm`) against `settings.overload.max_rss_bytes`.  They are sampled every
  `sample_interval_ms` by one task (`count_fds`: one `stat` of `/proc/self/fd`, whose size is
  the number of open descriptors; too much per accept all the same).  Between samples the descriptor count is
  estimated as *sampled + downstream connections opened since*: the running count of our own
  connections, kept by `ListenerHandle.connection_opened` / `connection_closed`.
* **States**, from the highest pressure in percent: `normal`; `reject_requests` at
  `reject_requests_percent` (new HTTP requests get 503 with flag `OL` and `connection: close`;
  keep-alive is disabled on responses; HTTP/2 connections get GOAWAY); `stop_accepting` at
  `stop_accepting_percent` (new downstream connections are closed at once with RST, and
  requests are still rejected).  A state is entered as soon as the pressure reaches its
  threshold and left only when it falls `hysteresis_percent` points below it, so a pressure
  hovering at a threshold does not flap.  Each change is logged once at warning level and shown
  in the `tulle_proxy_overload_state` gauge.
* **Caps**: `settings.max_connections` for the process, `Listener.max_connections` per
  listener (checked by the handle).  A connection beyond a cap is closed before anything is
  read from it; connections already open are never touched by a cap.

The admin endpoint does not go through listener handles, so none of this applies to it:
/ready and /metrics stay reachable while the proxy sheds traffic (thresholds below 100 %
leave it the descriptors it needs).

Why accept-and-close rather than pausing the listening socket: uvloop's server owns its
listening handle (libuv `uv_listen`); `loop.remove_reader` does not reach it, and closing and
re-creating the server would drop the backlog's connections.  Accept-and-close answers a client
at once (RST), so it can retry elsewhere instead of waiting in a full backlog; the cost is one
accept and one close per refused connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tulle.dataplane.telemetry.metrics import ProxyMetrics
    from tulle.proxyconfig.model import Settings

log = logging.getLogger("tulle.proxy")

NORMAL: Final = 0
REJECT: Final = 1
STOP: Final = 2
STATE_NAMES: Final = ("normal", "reject_requests", "stop_accepting")
UNLIMITED: Final = 1 << 62

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss() -> int:
    """Resident memory of this process in bytes (Linux /proc/self/statm), 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def count_fds() -> int:
    """Open file descriptors of this process (Linux /proc/self/fd), 0 if unknown.

    Linux 6.2 and later give the count as the directory's size: one `stat`, a few µs
    whatever the count (ADR 0085).  Listing the directory, as older kernels need (their size
    is 0), makes a string per descriptor on the event loop: ~1.2 ms per thousand descriptors
    here, a pause every sample that a proxy holding 8,000 idle connections paid in its p99.
    """
    try:
        n = os.stat("/proc/self/fd").st_size
        if n > 0:  # a live process has descriptors: 0 is an older kernel's size, not a count
            return n
        return len(os.listdir("/proc/self/fd")) - 1  # the directory's own descriptor
    except OSError:
        return 0


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE, read at every sample (prlimit can change it); 0 if unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


class OverloadGuard:
    """The process's connection caps and overload state; see the module docstring."""

    __slots__ = ("_count_fds", "_fd_limit", "_read_rss", "accept_limit", "active",
                 "active_at_sample", "fd_limit", "fd_pressure", "fds", "file_descriptors",
                 "hysteresis", "interval", "max_connections", "max_rss", "mem_pressure",
                 "metrics", "reject_at", "rejecting", "rss", "state", "stop_at", "watch_at")

    def __init__(self, metrics: ProxyMetrics | None = None, *,
                 read_rss: Callable[[], int] = read_rss,
                 count_fds: Callable[[], int] = count_fds,
                 fd_limit: Callable[[], int] = fd_limit) -> None:
        self.metrics = metrics
        self._read_rss = read_rss
        self._count_fds = count_fds
        self._fd_limit = fd_limit
        self.active = 0
        """Open downstream connections admitted through listener handles (admin excluded)."""
        self.accept_limit = UNLIMITED
        """`active` at which a new connection is refused: the process cap, the descriptor
        count at which `stop_accepting` would begin, or 0 while in that state."""
        self.watch_at = UNLIMITED
        """`active` at which the descriptor estimate reaches the next threshold up."""
        self.state = NORMAL
        self.rejecting = False
        """True from `reject_requests` up: read once per request by the HTTP drivers."""
        self.max_connections = 0
        self.file_descriptors = True
        self.max_rss = 0
        self.reject_at = 0.9
        self.stop_at = 0.95
        self.hysteresis = 0.05
        self.interval = 1.0
        self.fds = 0
        self.fd_limit = 0
        self.rss = 0
        self.fd_pressure = 0.0
        self.mem_pressure = 0.0
        self.active_at_sample = 0
        if metrics is not None:
            metrics.overload_state.labels().value = NORMAL

    # -- configuration -------------------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Take the limits of a snapshot in force (called at every apply) and re-sample."""
        o = settings.overload
        self.max_connections = settings.max_connections
        self.file_descriptors = o.file_descriptors
        self.max_rss = o.max_rss_bytes
        self.reject_at = o.reject_requests_percent / 100
        self.stop_at = o.stop_accepting_percent / 100
        self.hysteresis = o.hysteresis_percent / 100
        self.interval = o.sample_interval_ms / 1000
        self.sample()

    @property
    def monitoring(self) -> bool:
        return self.file_descriptors or self.max_rss > 0

    async def run(self) -> None:
        """Sample the monitors every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    # -- monitors ------------------------------------------------------------------------

    def sample(self) -> None:
        """Read every enabled monitor and update the state and the accept limits."""
        if self.file_descriptors:
            self.fd_limit = self._fd_limit()
            self.fds = self._count_fds() if self.fd_limit else 0
        else:
            self.fd_limit = self.fds = 0
        self.active_at_sample = self.active
        if self.max_rss > 0:
            self.rss = self._read_rss()
            self.mem_pressure = self.rss / self.max_rss
        else:
            self.rss = 0
            self.mem_pressure = 0.0
        self._update()

    def estimate(self) -> None:
        """Re-derive the descriptor pressure from connections opened since the last sample
        (called by a handle when `active` reaches `watch_at`)."""
        self._update()

    def _update(self) -> None:
        limit = self.fd_limit
        fds = self.fds + self.active - self.active_at_sample
        self.fd_pressure = fds / limit if limit else 0.0
        pressure = max(self.fd_pressure, self.mem_pressure)
        self._set_state(self._next_state(pressure))
        accept = self.max_connections or UNLIMITED
        watch = UNLIMITED
        if self.state == STOP:
            accept = 0
        elif limit:
            # Connections still to admit before the descriptor estimate reaches a threshold.
            base = self.active - fds
            accept = min(accept, base + _ceil(self.stop_at * limit))
            if self.state == NORMAL:
                watch = base + _ceil(self.reject_at * limit)
        self.accept_limit = accept
        self.watch_at = min(watch, accept)
        m = self.metrics
        if m is not None:
            m.overload_pressure.labels("file_descriptors").value = round(self.fd_pressure, 4)
            m.overload_pressure.labels("memory").value = round(self.mem_pressure, 4)

    def _next_state(self, pressure: float) -> int:
        up = STOP if pressure >= self.stop_at else REJECT if pressure >= self.reject_at else NORMAL
        h = self.hysteresis
        down = (STOP if pressure >= self.stop_at - h
                else REJECT if pressure >= self.reject_at - h else NORMAL)
        return max(up, min(self.state, down))

    def _set_state(self, state: int) -> None:
        if state == self.state:
            return
        old, self.state = self.state, state
        self.rejecting = state >= REJECT
        if self.metrics is not None:
            self.metrics.overload_state.labels().value = state
        seen = [f"{self.active} downstream connections"]
        if self.fd_limit:
            seen.append(f"file descriptors {self.fds + self.active - self.active_at_sample} of "
                        f"{self.fd_limit} ({100 * self.fd_pressure:.0f}%)")
        if self.max_rss:
            seen.append(f"RSS {self.rss} of {self.max_rss} bytes ({100 * self.mem_pressure:.0f}%)")
        log.warning("overload: %s -> %s (%s)", STATE_NAMES[old], STATE_NAMES[state],
                    ", ".join(seen))

    # -- actions -------------------------------------------------------------------------

    def refusal(self) -> str:
        """Why a connection at `active >= accept_limit` is refused (the metric's reason)."""
        if self.state != STOP and self.max_connections and self.active >= self.max_connections:
            return "process_limit"
        if self.state != STOP:
            self._update()  # the descriptor estimate crossed `stop_accepting_percent`
        return "overload"

    def count(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics.overload_actions.labels(action).value += 1


def _ceil(x: float) -> int:
    n = int(x)
    return n if n == x else n + 1
