"""The proxy process's data plane: binds listeners, swaps snapshots, drains.

`ProxyServer.apply(cfg)` is the only way configuration changes, whether it came from a file,
SIGHUP, or (later) the control plane's push.  It builds every new runtime object first and only
then swaps pointers, so a snapshot that cannot be applied (a port that cannot be bound, a
certificate that cannot be read) raises `ApplyError` and the previous one stays in force.
Listeners whose address, port and socket options are unchanged keep their sockets and their
connections; only their context pointer moves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from tulle.dataplane.listeners.context import ListenerContext, ListenerHandle
from tulle.dataplane.listeners.factory import protocol_factory
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager, run_sweeper
from tulle.proxyconfig.model import Listener, ProxyConfig

log = logging.getLogger("tulle.proxy")


class ApplyError(Exception):
    """A snapshot validated but could not be put in force; the previous one still is."""


def _bind_key(cfg: Listener) -> tuple[object, ...]:
    return (cfg.address, cfg.port, cfg.reuse_port, cfg.protocol, cfg.mode, cfg.tls)


class ProxyServer:
    def __init__(self, metrics: ProxyMetrics | None = None) -> None:
        self.metrics = metrics or ProxyMetrics()
        self.config: ProxyConfig | None = None
        self.clusters = ClusterManager(self.metrics)
        self.listeners: dict[str, ListenerHandle] = {}
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self.on_applied: list[Callable[[ProxyConfig], None]] = []

    # -- configuration -------------------------------------------------------------------

    async def apply(self, cfg: ProxyConfig) -> None:
        """Put `cfg` in force atomically, or raise ApplyError and change nothing."""
        if self.draining:
            raise ApplyError("the proxy is draining")
        settings = cfg.settings
        routers = {t.name: Router(t, settings.request_timeout_ms) for t in cfg.route_tables}
        # Bind new sockets before touching anything, so a bind failure changes nothing.
        old_by_name = self.listeners
        clusters = self.clusters.prepare(cfg.clusters, settings)
        new_handles: dict[str, ListenerHandle] = {}
        fresh: list[ListenerHandle] = []
        try:
            for lc in cfg.listeners:
                old = old_by_name.get(lc.name)
                if old is not None and _bind_key(old.ctx.cfg) == _bind_key(lc):
                    new_handles[lc.name] = old
                    continue
                ctx = ListenerContext(lc, settings, routers, clusters, self.metrics)
                handle = ListenerHandle(
                    lc.name, ctx,
                    m_active=self.metrics.connections_active.labels(lc.name),
                    m_total=self.metrics.connections_total.labels(lc.name))
                await self._bind(handle)
                fresh.append(handle)
                new_handles[lc.name] = handle
        except ApplyError:
            await self._unbind(fresh)
            raise
        except (OSError, ValueError, NotImplementedError) as exc:
            await self._unbind(fresh)
            raise ApplyError(str(exc)) from exc
        self.clusters.commit(clusters)
        # Commit: point kept listeners at their new context, retire removed ones.
        for lc in cfg.listeners:
            handle = new_handles[lc.name]
            if handle not in fresh:
                handle.ctx = ListenerContext(lc, settings, routers, clusters, self.metrics)
        for name, old in old_by_name.items():
            if new_handles.get(name) is not old:
                self._retire(old)
        self.listeners = new_handles
        self.config = cfg
        if self._sweeper is None:
            self._sweeper = run_sweeper(self.clusters)
            self._spawn(self._deadline_sweeper())
        for cb in self.on_applied:
            cb(cfg)
        log.info("config version %s in force: %d listeners, %d clusters", cfg.version,
                 len(cfg.listeners), len(cfg.clusters))

    async def _bind(self, handle: ListenerHandle) -> None:
        cfg = handle.ctx.cfg
        loop = asyncio.get_running_loop()
        factory = protocol_factory(handle)
        family = socket.AF_INET6 if ":" in cfg.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if cfg.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if cfg.mode == "transparent":
                try:
                    sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT (needs CAP_NET_ADMIN)
                except OSError:
                    pass  # REDIRECT works without it; TPROXY would need it
            sock.bind((cfg.address, cfg.port))
            sock.listen(4096)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ApplyError(f"listener {cfg.name}: cannot bind {cfg.address}:{cfg.port}: "
                             f"{exc.strerror or exc}") from exc
        ssl_ctx = None
        if cfg.tls is not None:
            from tulle.dataplane.listeners.tls import server_ssl_context

            ssl_ctx = server_ssl_context(cfg.tls)
        server = await loop.create_server(factory, sock=sock, ssl=ssl_ctx, backlog=4096)
        handle.servers.append(server)

    async def _unbind(self, handles: list[ListenerHandle]) -> None:
        for h in handles:
            for s in h.servers:
                s.close()

    def _retire(self, handle: ListenerHandle) -> None:
        """A listener left the config: stop accepting, drain its connections."""
        for s in handle.servers:
            s.close()
        handle.draining = True
        for conn in list(handle.connections):
            conn.start_drain()

    def bound_port(self, name: str) -> int:
        """The port a listener actually bound (useful with port 0)."""
        server = self.listeners[name].servers[0]
        return int(server.sockets[0].getsockname()[1])

    # -- housekeeping --------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deadline_sweeper(self) -> None:
        """Header and idle timeouts for all downstream connections, checked in one place."""
        loop = asyncio.get_running_loop()
        while True:
            cfg = self.config
            tick = 1.0
            if cfg is not None:
                tick = max(0.01, min(1.0, cfg.settings.header_timeout_ms / 4000))
            await asyncio.sleep(tick)
            now = loop.time()
            for handle in list(self.listeners.values()):
                for conn in list(handle.connections):
                    d = conn.deadline
                    if d and d <= now:
                        conn.on_deadline(now)

    # -- lifecycle -----------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, let in-flight requests finish, close idle connections.

        Returns True when every connection closed within `timeout` (default: the config's
        drain_timeout_ms); the rest are aborted.
        """
        self.draining = True
        if timeout is None:
            timeout = (self.config.settings.drain_timeout_ms / 1000) if self.config else 5.0
        handles = list(self.listeners.values())
        for h in handles:
            for s in h.servers:
                s.close()
            h.draining = True
        for h in handles:
            for conn in list(h.connections):
                conn.start_drain()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end and any(h.connections for h in handles):
            await asyncio.sleep(0.05)
        clean = not any(h.connections for h in handles)
        for h in handles:
            for conn in list(h.connections):
                conn.abort()
        self.clusters.close()
        return clean

    async def close(self) -> None:
        for h in self.listeners.values():
            for s in h.servers:
                s.close()
            for conn in list(h.connections):
                conn.abort()
        self.clusters.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await asyncio.sleep(0)
