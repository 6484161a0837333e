"""Run the proxy as a real process (`tulle proxy run --config FILE`), from a config dict.

    async with proxy_process(cfg, tmp_path) as p:
        port = p.port("out")                   # listener ports are chosen before the start
        status, body = await p.admin("/ready")
        p.write_config(new_cfg); p.signal(signal.SIGHUP)
        code = await p.stop()                  # SIGTERM, wait, exit code

Listeners and the admin endpoint given port 0 get a free port picked up front (the process
cannot tell us which port it bound), so tests know every address before the process starts.
With `settings.workers: N` the admin ports `admin.port + i` are all checked free and every
worker's /ready is awaited.  The process runs in its own session: whatever happens, the context
manager ends by killing its whole process group (workers included), and if the test process
itself dies the proxy gets SIGTERM (PR_SET_PDEATHSIG).  Its stderr (the log) goes
to a file next to the config: `p.log()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.proxy import free_port

TULLE = str(Path(sys.executable).with_name("tulle"))


def _free_block(n: int, avoid: frozenset[int] = frozenset(), tries: int = 200) -> int:
    """A port p with p .. p+n-1 all free on 127.0.0.1, as the proxy binds them (with
    SO_REUSEADDR, as asyncio's servers do: a port some closed connection holds in TIME_WAIT,
    plentiful while a benchmark ran, is free to it), and none of them in `avoid`: ports
    already handed to the same config's listeners, free now only because nothing bound them
    yet (a worker's admin port once landed on the listener's)."""
    for _ in range(tries):
        base = free_port()
        if base + n > 65535 or avoid.intersection(range(base, base + n)):
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports found")


def assign_ports(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of `cfg` where every listener port 0 and admin port 0 is a concrete free port."""
    cfg = copy.deepcopy(cfg)
    for lst in cfg.get("listeners", []):
        if not lst.get("port"):
            lst["port"] = free_port()
    admin = cfg.setdefault("admin", {})
    if not admin.get("port"):
        taken = frozenset(int(lst["port"]) for lst in cfg.get("listeners", []))
        admin["port"] = _free_block(int(cfg.get("settings", {}).get("workers", 1)), taken)
    return cfg


async def http_get(port: int, path: str, *, method: str = "GET",
                   timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh loopback connection; (status, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                         f"connection: close\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def nothing_listens(port: int) -> bool:
    """No listener on loopback `port`: a connect is refused."""
    try:
        await http_get(port, "/")
    except ConnectionRefusedError:
        return True
    return False


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (VmRSS in /proc), in bytes: how memory tests
    measure a proxy rather than assume."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def children_of(pid: int) -> set[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def _die_with_test() -> None:
    """In the child before exec: SIGTERM it if the test process dies (even by SIGKILL), so a
    crashed test run leaves no proxy behind (Linux; workers do the same to the supervisor)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


class ProxyProcess:
    """A proxy running as a child process; see the module docstring."""

    def __init__(self, cfg: dict[str, Any], workdir: Path, *, watch_interval: float = 0.1,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.config = assign_ports(cfg)
        self.workdir = workdir
        self.config_path = workdir / "proxy.yaml"
        self.log_path = workdir / "proxy.log"
        self.watch_interval = watch_interval
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(self.config)

    # -- addresses -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def workers(self) -> int:
        return int(self.config.get("settings", {}).get("workers", 1))

    def port(self, name: str = "out") -> int:
        for lst in self.config["listeners"]:
            if lst["name"] == name:
                return int(lst["port"])
        raise KeyError(name)

    def url(self, name: str = "out", path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port(name)}{path}"

    def admin_port(self, worker: int = 0) -> int:
        return int(self.config["admin"]["port"]) + worker

    # -- control -------------------------------------------------------------------------

    def write_config(self, cfg: dict[str, Any]) -> None:
        """Replace the config file atomically (write + rename), as a careful operator would.

        Ports are not reassigned: a listener with port 0 stays 0 (tests of rejection use it).
        """
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.replace(self.config_path)

    def start(self) -> None:
        cmd = [TULLE, "proxy", "run", "--config", str(self.config_path),
               "--watch-interval", str(self.watch_interval), *self.extra_args]
        with self.log_path.open("ab") as log:
            # preexec_fn only calls prctl: it takes no lock, so threads cannot deadlock it.
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_test)  # noqa: PLW1509

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def admin(self, path: str, worker: int = 0, method: str = "GET") -> tuple[int, bytes]:
        return await http_get(self.admin_port(worker), path, method=method)

    async def metric(self, name: str, worker: int = 0, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`, from /metrics."""
        status, body = await self.admin("/metrics", worker)
        assert status == 200, body
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series != name and not series.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    async def upstream_busy(self, cluster: str | None = None, worker: int = 0) -> int:
        """Upstream connections with an exchange in flight, from /clusters."""
        status, body = await self.admin("/clusters", worker)
        assert status == 200, body
        return sum(e["connections_busy"] for c in json.loads(body)
                   if cluster is None or c["name"] == cluster for e in c["endpoints"])

    async def wait_upstream_busy(self, n: int, cluster: str | None = None,
                                 worker: int = 0) -> None:
        """Wait until `n` requests are with the upstream (proof that they are in flight)."""
        async def busy() -> bool:
            return await self.upstream_busy(cluster, worker) >= n
        await self.wait_for(busy, what=f"{n} busy upstream connection(s)")

    async def wait_for(self, predicate: Any, *, timeout: float = 10.0,
                       interval: float = 0.05, what: str = "condition",
                       while_running: bool = True) -> None:
        """Poll an async predicate until it is true (bounded); fails with the proxy's log, also
        as soon as the proxy exits unless `while_running` is False."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            if while_running and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode} while waiting "
                                     f"for {what}:\n{self.log()}")
            try:
                if await predicate():
                    return
            except OSError:
                pass
            if loop.time() > end:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")
            await asyncio.sleep(interval)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        for w in range(self.workers):
            async def ready(w: int = w) -> bool:
                return (await self.admin("/ready", w))[0] == 200
            await self.wait_for(ready, timeout=timeout, what=f"/ready of worker {w}")

    async def wait_reload(self, result: str, before: float, worker: int = 0,
                          timeout: float = 10.0) -> None:
        """Wait until tulle_proxy_config_reloads_total{result} exceeds `before`."""
        async def moved() -> bool:
            n = await self.metric("tulle_proxy_config_reloads_total", worker, result=result)
            return n > before
        await self.wait_for(moved, timeout=timeout, what=f"a reload with result={result}")

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        code = await asyncio.to_thread(proc.wait, timeout)
        return int(code)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code (the drain runs in between)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def kill(self) -> None:
        """Kill the whole process group (workers too), whatever state it is in."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextlib.asynccontextmanager
async def proxy_process(cfg: dict[str, Any], workdir: Path, *, watch_interval: float = 0.1,
                        ready: bool = True,
                        extra_args: tuple[str, ...] = ()) -> AsyncIterator[ProxyProcess]:
    """Start the proxy, wait until every worker is ready, and always kill it on the way out."""
    p = ProxyProcess(cfg, workdir, watch_interval=watch_interval, extra_args=extra_args)
    p.start()
    try:
        if ready:
            await p.wait_ready()
        yield p
    finally:
        p.kill()
