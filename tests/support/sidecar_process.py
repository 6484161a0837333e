"""`tulle proxy run --control-plane ...` as a real child process, fed by a control plane the
test started (in-process or `ControlPlaneProcess`), for what needs the process: its signals,
its restart from `--cache-dir`, its reconnect schedule in its own log.

    car = SidecarProcess(cp.api, cp.stream_port, "api-0", tmp_path, ports=[("http", p, app)])
    await car.start(); await car.wait_ready()
    ...
    car.kill()

The bootstrap token is issued through the control plane's REST API (what `tulle token issue`
calls) and given in `TULLE_BOOTSTRAP_TOKEN`; the log (`--log-level debug`: every retry is a
line) goes to a file in the work directory.  The process runs in its own session and gets
SIGTERM if the test process dies; `kill()` SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.support.controlplane import eventually, issue_token
from tests.support.proxy import free_port
from tests.support.subproc import TULLE, _die_with_test
from tulle.proxyconfig.stream import WorkloadInfo


class SidecarProcess:
    def __init__(self, api: str, stream_port: int, name: str, workdir: Path, *,
                 namespace: str = "shop", ports: list[tuple[str, int, int]] | None = None,
                 labels: dict[str, str] | None = None, cache_dir: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.api, self.stream_port, self.name, self.namespace = api, stream_port, name, namespace
        self.ports = ports or []
        self.labels = labels or {}
        self.cache_dir = cache_dir
        self.extra = extra
        self.admin_port = free_port()
        self.outbound_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.token = ""
        """The bootstrap token of the last start (a restart may give it again: a proxy with a
        cached identity presents its certificate instead, ADR 0123)."""

    async def start(self, token: str | None = None) -> None:
        if token is None:
            token = await issue_token(self.api, WorkloadInfo(
                name=self.name, namespace=self.namespace, labels=self.labels))
        self.token = token
        args = [TULLE, "proxy", "run", "--control-plane", f"127.0.0.1:{self.stream_port}",
                "--workload", self.name, "-n", self.namespace, "--address", "127.0.0.1",
                "--admin-port", str(self.admin_port), "--outbound-port", str(self.outbound_port),
                "--log-level", "debug", *self.extra]
        for name, port, target in self.ports:
            args += ["--port", f"{name}:{port}:{target}"]
        for k, v in self.labels.items():
            args += ["--label", f"{k}={v}"]
        if self.cache_dir is not None:
            args += ["--cache-dir", str(self.cache_dir)]
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *args, env={**os.environ, "TULLE_BOOTSTRAP_TOKEN": token},
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=_die_with_test)  # noqa: PLW1509

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def admin(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{self.admin_port}{path}") as r:
            return r.status, await r.text()

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`, from /metrics."""
        status, text = await self.admin("/metrics")
        assert status == 200, text
        total = 0.0
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if (series == name or series.startswith(name + "{")) and all(
                    f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    async def ready(self) -> bool:
        try:
            return (await self.admin("/ready"))[0] == 200
        except aiohttp.ClientError:
            return False

    async def wait_ready(self, timeout: float = 20.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            return await self.ready()
        await eventually(ready, timeout=timeout, interval=0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def sidecar_processes(*cars: SidecarProcess) -> AsyncIterator[tuple[SidecarProcess, ...]]:
    """Start every sidecar and wait until each is ready; SIGKILL them all on the way out."""
    try:
        for c in cars:
            await c.start()
        for c in cars:
            await c.wait_ready()
        yield cars
    finally:
        for c in cars:
            c.kill()
            if c.proc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.proc.wait(), 5)
