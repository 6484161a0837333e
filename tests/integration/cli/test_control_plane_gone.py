"""A control plane that goes away mid-command: `tulle get --watch` says so in one line per
failed poll and keeps watching, and picks up again when it is back; a plain `tulle get` fails
with exit 1 and one line; stopping the control plane with proxies connected logs no traceback,
and each proxy logs the outage once, with the retry schedule, and its return."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.support.cli import PYTHONPATH, TULLE, tulle
from tests.support.controlplane import ControlPlaneProcess, eventually, issue_token

from tulle.proxyconfig.stream import WorkloadInfo


async def _proxy(cp: ControlPlaneProcess, name: str, log: Path) -> asyncio.subprocess.Process:
    token = await issue_token(cp.api, WorkloadInfo(name=name, namespace="shop"))
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            TULLE, "proxy", "run", "--control-plane", f"127.0.0.1:{cp.stream_port}",
            "--workload", name, "-n", "shop", "--address", "127.0.0.1", "--admin-port", "0",
            "--outbound-port", "0", "--log-level", "debug",
            env={**os.environ, "TULLE_BOOTSTRAP_TOKEN": token}, stdout=out, stderr=out)


async def test_watch_outlives_the_control_plane_and_proxies_log_the_outage_once(
        tmp_path: Path) -> None:
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path)
    cp.start()
    proxies: list[asyncio.subprocess.Process] = []
    watch = None
    try:
        await cp.wait_ready()
        logs = [tmp_path / f"p{i}.log" for i in range(2)]
        for i, log in enumerate(logs):
            proxies.append(await _proxy(cp, f"p{i}", log))

        async def both() -> bool:
            return sum(1 for p in (await cp.proxies()).values() if p["connected"]) == 2

        await eventually(both, timeout=20)
        watch = await asyncio.create_subprocess_exec(
            TULLE, "get", "wl", "-n", "shop", "--watch",
            env={"TULLE_SERVER": cp.api, "TULLE_TOKEN": cp.admin_token, "PATH": "/usr/bin:/bin",
                 "HOME": "/nonexistent", **PYTHONPATH},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert watch.stdout is not None and watch.stderr is not None
        first = await asyncio.wait_for(watch.stdout.readline(), 20)
        assert first.decode().split()[:2] == ["NAMESPACE", "NAME"]

        assert cp.proc is not None
        cp.proc.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, cp.proc.wait, 20) == 0
        line = (await asyncio.wait_for(watch.stderr.readline(), 20)).decode()
        assert line.startswith(f"error: cannot reach the control plane at {cp.api}")
        assert line.rstrip().endswith("(still watching)")
        code, _, err = await tulle(cp.api, "get", "wl", "-n", "shop", token="x")
        assert code == 1 and err.startswith("error: cannot reach the control plane")
        assert "Traceback" not in err
        assert "Traceback" not in cp.log()

        def outage_logged() -> bool:
            return all("unreachable" in log.read_text() for log in logs)

        await eventually(outage_logged, timeout=20)
        cp.start()  # the same store and ports: the proxies come back
        await cp.wait_ready()
        await eventually(both, timeout=30)

        def back_logged() -> bool:
            return all("connected again after" in log.read_text() for log in logs)

        await eventually(back_logged, timeout=20)
        for log in logs:
            text = log.read_text()
            # one WARNING when it went, not one per retry (the retries are DEBUG lines here)
            assert text.count("WARNING tulle.agent") == 1, text
            assert text.count("INFO tulle.agent") <= 4, text
            assert "retrying with exponential backoff" in text
            assert "Traceback" not in text
        watch.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watch.wait(), 10) == 0
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    finally:
        if watch is not None and watch.returncode is None:
            watch.kill()
        for p in proxies:
            if p.returncode is None:
                p.kill()
                await p.wait()
        cp.kill()
