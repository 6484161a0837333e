"""`settings.workers: N`: N processes share the listeners with SO_REUSEPORT; the parent forwards
signals and restarts a worker that dies.  Worker i serves admin on admin.port + i."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

from tests.support.proxy import simple_config
from tests.support.rawhttp import RawClient
from tests.support.subproc import children_of, proxy_process

from tulle.net.ports import listening_inodes

REQUESTS = "tulle_proxy_requests_total"


async def test_workers_share_listeners_restart_reload_and_drain(origin: int,
                                                                tmp_path: Path) -> None:
    cfg = simple_config(origin, settings={"workers": 2, "drain_timeout_ms": 5000})
    cfg["listeners"][0]["protocol"] = "http1"
    async with proxy_process(cfg, tmp_path, watch_interval=0) as p:
        workers = children_of(p.pid)
        assert len(workers) == 2
        assert len(listening_inodes(p.port())) == 2  # one socket per worker, same port

        # Many new connections: the kernel spreads them over both workers.
        for _ in range(40):
            c = await RawClient.connect(p.port())
            assert (await c.request("GET", "/echo")).status == 200
            c.close()
        served = [await p.metric(REQUESTS, worker=w, response_code="200") for w in (0, 1)]
        assert sum(served) == 40
        assert min(served) > 0, served

        # SIGHUP to the parent reaches every worker.
        new = copy.deepcopy(p.config)
        new["version"] = "v2"
        p.write_config(new)
        p.signal(signal.SIGHUP)
        for w in (0, 1):
            await p.wait_reload("applied", 0, worker=w)
            status, body = await p.admin("/config_dump", worker=w)
            assert json.loads(body)["version"] == "v2"

        # A killed worker is replaced, and serves again on its admin port.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = children_of(p.pid)
            return len(now) == 2 and victim not in now
        await p.wait_for(replaced, what="the killed worker to be restarted")
        await p.wait_ready()
        assert len(listening_inodes(p.port())) == 2
        c = await RawClient.connect(p.port())
        assert (await c.request("GET", "/echo")).status == 200
        c.close()

        # SIGTERM to the parent drains every worker; all exit, the parent with 0.
        slow = await RawClient.connect(p.port())
        slow.send("GET", "/delay/1000")
        survivors = children_of(p.pid)

        async def in_flight() -> bool:
            return sum([await p.upstream_busy(worker=w) for w in (0, 1)]) == 1
        await p.wait_for(in_flight, what="the slow request to reach the origin")
        assert await p.stop() == 0
        r = await slow.response()
        assert (r.status, r.headers.get("connection")) == (200, "close")
        assert all(not Path(f"/proc/{pid}").exists() for pid in survivors)
    assert "restarting" in p.log()


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")  # exited, not yet reaped


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(origin: int,
                                                                    tmp_path: Path) -> None:
    cfg = simple_config(origin, settings={"workers": 2, "drain_timeout_ms": 2000})
    cfg["listeners"][0]["protocol"] = "http1"
    async with proxy_process(cfg, tmp_path) as p:
        workers = children_of(p.pid)
        assert len(workers) == 2
        os.kill(p.pid, signal.SIGKILL)
        assert await p.wait_exit() == -signal.SIGKILL

        async def all_gone() -> bool:
            return all(_gone(w) for w in workers)
        await p.wait_for(all_gone, what="orphaned workers to exit", while_running=False)
    assert p.log().count("drained cleanly") == 2
