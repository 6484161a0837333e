"""An in-memory transport, and a listener's handle built from a config without a socket:
what drives a connection's protocol object in one process.

Why it is in the product tree: two things outside the tests drive the real drivers in one
process — the driver unit tests (`tests/support/transport.py` and `tests/support/listener.py`
re-export these) and the CPU micro-benchmarks (`bench/micro_http1.py`), which must not import
the test tree.  One
implementation keeps the two from drifting apart (they had already: one copy reported a close,
the other refused it).  Nothing in the proxy itself uses it.

It keeps what is written (up to `keep` bytes, the newest), remembers whether reading is paused,
and reports a close to its protocol as a real transport does (`connection_lost`, once).
"""

from __future__ import annotations

from typing import Any

from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager
from tulle.proxyconfig.model import ProxyConfig


def memory_handle(cfg: ProxyConfig, name: str = "l") -> ListenerHandle:
    """The handle of `cfg`'s first listener, as the server makes one (its routers, its
    clusters prepared and committed, its context, its connection gauges), labelled `name` in
    the metrics.  The context reaches everything else (`handle.ctx.metrics`,
    `handle.ctx.clusters["name"]`)."""
    metrics = ProxyMetrics()
    settings = cfg.settings
    routers = {t.name: Router(t, settings.request_timeout_ms) for t in cfg.route_tables}
    manager = ClusterManager(metrics)
    manager.commit(manager.prepare(cfg.clusters, settings))
    ctx = ListenerContext(cfg.listeners[0], settings, routers, manager.clusters, metrics)
    return ListenerHandle(name, ctx, m_active=metrics.connections_active.labels(name),
                          m_total=metrics.connections_total.labels(name))


class MemoryTransport:
    """What the drivers use of an `asyncio.Transport`, in memory."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 50000),
                 keep: int | None = None, extra: dict[str, Any] | None = None) -> None:
        self.out = bytearray()
        self.keep = keep
        """Keep at most this many of the newest bytes written (None: all)."""
        self.writes = 0
        """Calls to `write` (one per message on the hot path)."""
        self.protocol: Any = None
        """Told `connection_lost(None)` on close, when set."""
        self.closed = False
        self.aborted = False
        """Closed by `abort` (a reset, on a socket), not by `close`."""
        self.eof = False
        self.reading = True
        self.high_water: int | None = None
        self._extra = {"peername": peer, **(extra or {})}

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.out += data
        keep = self.keep
        if keep is not None and len(self.out) > 2 * keep:
            del self.out[:-keep]

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def take(self) -> bytes:
        """What was written since the last `take`."""
        data = bytes(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: Any) -> None:
        """A detecting driver's hand-over (`listeners.detect.handover`)."""
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            protocol, self.protocol = self.protocol, None
            if protocol is not None:
                protocol.connection_lost(None)

    def abort(self) -> None:
        if not self.closed:
            self.aborted = True
        self.close()
