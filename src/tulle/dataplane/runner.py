"""Running a proxy process from a config file: signals, reloads, workers.

* SIGTERM / SIGINT: drain (stop accepting, finish in-flight, close idle) within
  `settings.drain_timeout_ms`, then exit 0.
* SIGHUP, or a change of the file's contents (polled): reload.  An invalid file is reported with
  its field paths and the running config stays in force.
* `settings.workers > 1`: the parent forks that many workers, each binding every listener with
  SO_REUSEPORT (the kernel spreads connections), forwards signals, and restarts a worker that
  dies.  Worker *i* serves admin on `admin.port + i`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from tulle.dataplane.listeners.admin import start_admin
from tulle.dataplane.server import ApplyError, ProxyServer
from tulle.proxyconfig.load import load_file
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.validate import ConfigError

log = logging.getLogger("tulle.proxy")


def _digest(path: Path) -> bytes:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return b""


def _for_worker(cfg: ProxyConfig, index: int, workers: int) -> ProxyConfig:
    if workers <= 1:
        return cfg
    listeners = [msgspec.structs.replace(lc, reuse_port=True) for lc in cfg.listeners]
    admin = cfg.admin
    if admin.port:
        admin = msgspec.structs.replace(admin, port=admin.port + index)
    return msgspec.structs.replace(cfg, listeners=listeners, admin=admin)


class ProxyProcess:
    """One serving process (the only one, or one worker)."""

    def __init__(self, path: Path, index: int = 0, workers: int = 1,
                 watch_interval: float = 1.0) -> None:
        self.path = path
        self.index = index
        self.workers = workers
        self.watch_interval = watch_interval
        self.server = ProxyServer()
        self._stop = asyncio.Event()
        self._digest = b""

    async def reload(self, reason: str) -> bool:
        try:
            cfg = load_file(self.path)
            await self.server.apply(_for_worker(cfg, self.index, self.workers))
        except ConfigError as exc:
            self.server.metrics.config_reloads.labels("rejected").value += 1
            log.error("config %s rejected (%s); keeping version %s:\n%s", self.path, reason,
                      self.server.config.version if self.server.config else "-", exc)
            return False
        except ApplyError as exc:
            self.server.metrics.config_reloads.labels("failed").value += 1
            log.error("config %s could not be applied (%s); keeping the previous one: %s",
                      self.path, reason, exc)
            return False
        self.server.metrics.config_reloads.labels("applied").value += 1
        return True

    async def _watch(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.watch_interval)
            d = _digest(self.path)
            if d and d != self._digest:
                self._digest = d
                await self.reload("file changed")

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._digest = _digest(self.path)
        cfg = _for_worker(load_file(self.path), self.index, self.workers)
        try:
            await self.server.apply(cfg)
        except ApplyError as exc:
            log.error("cannot start: %s", exc)
            return 1
        admin = None
        if cfg.admin.port:
            try:
                admin = await start_admin(self.server, cfg.admin.address, cfg.admin.port)
            except OSError as exc:
                log.error("cannot bind admin %s:%s: %s", cfg.admin.address, cfg.admin.port, exc)
                await self.server.close()
                return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            t = loop.create_task(self.reload("SIGHUP"))
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = loop.create_task(self._watch()) if self.watch_interval > 0 else None
        ports = ", ".join(f"{n}={self.server.bound_port(n)}" for n in self.server.listeners)
        log.info("proxy %s ready (pid %d): %s; admin %s", cfg.node.name, os.getpid(), ports,
                 f"{cfg.admin.address}:{cfg.admin.port}" if admin else "off")
        await self._stop.wait()
        log.info("draining (deadline %d ms)", self.server.config.settings.drain_timeout_ms
                 if self.server.config else 0)
        if watcher is not None:
            watcher.cancel()
        clean = await self.server.drain()
        log.info("drained %s", "cleanly" if clean else "with connections aborted at the deadline")
        if admin is not None:
            admin.close()
        await self.server.close()
        return 0


def _run_one(path: Path, index: int, workers: int, watch_interval: float) -> int:
    import uvloop

    return uvloop.run(ProxyProcess(path, index, workers, watch_interval).serve())


def _supervise(path: Path, workers: int, watch_interval: float) -> int:
    children: dict[int, int] = {}
    stopping = False

    def spawn(i: int) -> None:
        pid = os.fork()
        if pid == 0:
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            code = 1
            try:
                code = _run_one(path, i, workers, watch_interval)
            finally:
                os._exit(code)
        children[pid] = i

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    for i in range(workers):
        spawn(i)
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        i = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if i is not None and not stopping:
            log.error("worker %d (pid %d) exited with %d; restarting", i, pid, code)
            time.sleep(0.2)
            spawn(i)
    return worst


def run(path: str | Path, watch_interval: float = 1.0) -> int:
    """Run a proxy until SIGTERM; returns the exit code."""
    p = Path(path)
    cfg = load_file(p)  # raises ConfigError with every field path
    workers = cfg.settings.workers
    if workers > 1:
        return _supervise(p, workers, watch_interval)
    return _run_one(p, 0, 1, watch_interval)


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
