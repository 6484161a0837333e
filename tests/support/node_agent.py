"""`tulle proxy run --node-config` as a real child process: one node agent fronting several
pods, with `--cache-dir`, for what needs the process (its restart from the cache, its log).

    node = NodeAgentProcess(cp, tmp_path, tmp_path / "node.yaml", tmp_path / "node-cache")
    await node.start(); ...; await node.stop()

The log (`--log-level debug`) goes to `node.log` in the work directory and is appended to
across restarts (`log()[mark:]` reads one run's).  The process runs in its own session and
gets SIGTERM if the test process dies; `stop()` SIGKILLs its process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from tests.support.controlplane import ControlPlaneProcess
from tests.support.proxy import free_port
from tests.support.subproc import TULLE, _die_with_test, http_get


class NodeAgentProcess:
    def __init__(self, cp: ControlPlaneProcess, workdir: Path, config: Path,
                 cache: Path) -> None:
        self.cp, self.config, self.cache = cp, config, cache
        self.admin_port = free_port()
        self.log_path = workdir / "node.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                TULLE, "proxy", "run", "--control-plane", f"127.0.0.1:{self.cp.stream_port}",
                "--node-config", str(self.config), "--cache-dir", str(self.cache),
                "--admin-port", str(self.admin_port), "--log-level", "debug",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=_die_with_test)  # noqa: PLW1509

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await http_get(self.admin_port, "/metrics")
        assert status == 200
        total = 0.0
        for line in text.decode().splitlines():
            series, _, value = line.rpartition(" ")
            if series.startswith(name + "{") and all(f'{k}="{v}"' in series
                                                      for k, v in labels.items()):
                total += float(value)
        return total

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)
