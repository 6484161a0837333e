"""Running a proxy process from a config file: signals, reloads, workers.

* SIGTERM / SIGINT: keep accepting for `settings.drain_propagation_ms` when it is set (unset
  here: 0, ADR 0113), then drain (stop accepting, finish in-flight, close idle) within
  `settings.drain_timeout_ms`, abort what is left, exit 0.  A second SIGTERM / SIGINT during the
  period ends it; one during the drain aborts the remaining connections at once.
* SIGHUP, or a change of the file's contents (polled every `watch_interval` seconds): reload.
  An invalid file is reported with its field paths (`result="rejected"`), a file that cannot be
  put in force (a port in use) is reported too (`result="failed"`); either way the running
  config stays in force.  `settings.workers` and the `admin` section are read at start only.
* `settings.workers > 1`: the parent forks that many workers, each binding every listener with
  SO_REUSEPORT (the kernel spreads connections), forwards SIGTERM / SIGINT / SIGHUP, and
  restarts a worker that dies (with backoff when it keeps dying).  Worker *i* serves admin on
  `admin.port + i`.  Each worker watches the file itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import msgspec

from tulle import native
from tulle.dataplane.listeners.admin import start_admin
from tulle.dataplane.server import ApplyError, ProxyServer
from tulle.proxyconfig.load import load_file, load_text
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.validate import ConfigError, FieldError

log = logging.getLogger("tulle.proxy")

RELOAD_APPLIED = "applied"
RELOAD_REJECTED = "rejected"
"""The file is not a valid config (syntax, types, references)."""
RELOAD_FAILED = "failed"
"""The config is valid but could not be put in force (e.g. a port in use)."""


def _read_bytes(path: str) -> bytes:
    """The file's bytes (paths are strings here: `pathlib` is not on a proxy's path, ADR 0068)."""
    with open(path, "rb") as f:
        return f.read()


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

    def __init__(self, path: str, index: int = 0, workers: int = 1,
                 watch_interval: float = 1.0) -> None:
        self.path = path
        self.index = index
        self.workers = workers
        self.watch_interval = watch_interval
        self.server = ProxyServer()
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        self._digest = b""
        """The file's contents as last read (kept whole: a config is small, and hashlib would
        cost 0.7 MB of resident memory)."""
        self._reload_lock = asyncio.Lock()

    def _read(self) -> ProxyConfig:
        """Read and validate the file; remembers its digest so the watcher skips it."""
        try:
            data = _read_bytes(self.path)
        except OSError as exc:
            raise ConfigError([FieldError("", f"cannot read {self.path}: "
                                          f"{exc.strerror or exc}")]) from exc
        self._digest = data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([FieldError("", f"{self.path} is not UTF-8 text")]) from exc
        return _for_worker(load_text(text, source=str(self.path)), self.index, self.workers)

    async def reload(self, reason: str) -> bool:
        """Read the file again and put it in force; False (and a log line) when it was not."""
        async with self._reload_lock:
            counter = self.server.metrics.config_reloads
            running = self.server.config
            keeping = running.version if running is not None else "-"
            try:
                cfg = self._read()
                await self.server.apply(cfg)
            except ConfigError as exc:
                counter.labels(RELOAD_REJECTED).value += 1
                log.error("config %s rejected (%s), keeping version %s:\n  %s", self.path,
                          reason, keeping, "\n  ".join(str(e) for e in exc.errors))
                return False
            except ApplyError as exc:
                counter.labels(RELOAD_FAILED).value += 1
                log.error("config %s could not be applied (%s), keeping version %s: %s",
                          self.path, reason, keeping, exc)
                return False
            counter.labels(RELOAD_APPLIED).value += 1
            if running is not None:
                if cfg.settings.workers != running.settings.workers:
                    log.warning("settings.workers changed; it takes effect at the next start")
                if cfg.admin != running.admin:
                    log.warning("the admin section changed; it takes effect at the next start")
            return True

    def _digest_now(self) -> bytes | None:
        try:
            return _read_bytes(self.path)
        except OSError:
            return None  # mid-replace by an editor: look again next time

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            d = self._digest_now()
            if d is not None and d != self._digest:
                await self.reload("file changed")

    def _on_stop_signal(self) -> None:
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            cfg = self._read()
        except ConfigError as exc:
            for e in exc.errors:
                log.error("config %s: %s", self.path, e)
            return 2
        try:
            await self.server.apply(cfg)
        except ApplyError as exc:
            log.error("cannot start: %s", exc)
            await self.server.close()
            return 1
        admin = None
        if cfg.admin.port:
            try:
                admin = await start_admin(self.server, cfg.admin.address, cfg.admin.port)
            except OSError as exc:
                log.error("cannot bind admin %s:%s: %s", cfg.admin.address, cfg.admin.port,
                          exc.strerror or exc)
                await self.server.close()
                return 1
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        if self.workers <= 1:  # a worker stops on the supervisor's SIGTERM only (see _supervise)
            loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            t = loop.create_task(self.reload("SIGHUP"))
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = loop.create_task(self._watch()) if self.watch_interval > 0 else None
        ports = ", ".join(f"{n}={self.server.bound_port(n)}" for n in self.server.listeners)
        hot_path, why = native.mode()
        log.info("proxy %s ready (pid %d, worker %d): %s; admin %s; hot path %s (%s)",
                 cfg.node.name, os.getpid(), self.index, ports,
                 f"{cfg.admin.address}:{cfg.admin.port}" if admin else "off", hot_path, why)
        await self._stop.wait()
        if watcher is not None:
            watcher.cancel()
        for t in list(reloads):
            t.cancel()
        running = self.server.config
        period = (running.settings.drain_propagation_ms or 0) if running is not None else 0
        if period:
            log.info("stopping: still accepting for %d ms", period)
            await self.server.keep_accepting(period / 1000, self._abort)
            self._abort.clear()  # (a second signal ended the period; a third aborts the drain)
        timeout = running.settings.drain_timeout_ms if running is not None else 0
        log.info("draining (deadline %d ms)", timeout)
        drain = loop.create_task(self.server.drain())
        abort = loop.create_task(self._abort.wait())
        await asyncio.wait({drain, abort}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            log.info("second stop signal: aborting the remaining connections")
            drain.cancel()
            clean = False
        else:
            clean = drain.result()
        abort.cancel()
        log.info("drained %s", "cleanly" if clean else "with connections aborted")
        if admin is not None:
            admin.close()
        await self.server.close()
        return 0


def _run_one(path: str, index: int, workers: int, watch_interval: float) -> int:
    import uvloop

    return uvloop.run(ProxyProcess(path, index, workers, watch_interval).serve())


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM (and drains) when the supervisor dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # only with workers: 0.4 MB

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 5.0
STABLE_AFTER = 5.0
"""A worker that lived this many seconds resets the restart backoff."""


def _supervise(path: str, workers: int, watch_interval: float) -> int:
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    delay = dict.fromkeys(range(workers), RESTART_DELAY_MIN)
    stopping = False
    parent = os.getpid()

    def spawn(i: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                # Ctrl-C reaches the whole process group; the supervisor forwards it once, as
                # SIGTERM, so that a second Ctrl-C (not the tty's copy) means "abort now".
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _die_with_parent()
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(0)
                code = _run_one(path, i, workers, watch_interval)
            except BaseException:
                log.exception("worker %d crashed", i)
            finally:
                os._exit(code)
        children[pid] = (i, time.monotonic())

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            sig = signal.SIGTERM
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    for i in range(workers):
        if not stopping:
            spawn(i)
    log.info("supervisor %d started %d workers", parent, workers)
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        entry = children.pop(pid, None)
        if entry is None:
            continue
        i, started = entry
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, abs(code))
            continue
        lived = time.monotonic() - started
        delay[i] = RESTART_DELAY_MIN if lived >= STABLE_AFTER else min(
            RESTART_DELAY_MAX, delay[i] * 2)
        log.error("worker %d (pid %d) exited with %d; restarting in %.1f s", i, pid, code,
                  delay[i])
        time.sleep(delay[i])
        if not stopping:
            spawn(i)
    return worst


def run(path: str | os.PathLike[str], watch_interval: float = 1.0) -> int:
    """Run a proxy until SIGTERM; returns the exit code.  Raises ConfigError for a bad file."""
    p = os.fspath(path)
    cfg = load_file(p)  # raises ConfigError with every field path
    workers = cfg.settings.workers
    if workers > 1:
        return _supervise(p, workers, watch_interval)
    return _run_one(p, 0, 1, watch_interval)


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
