"""The stdout sink in a real `tulle proxy run` process with two workers: every request one
whole JSON line on the process's standard output (never interleaved with another), and what
is queued when SIGTERM comes is written before the process exits."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from tests.support.proxy import simple_config
from tests.support.subproc import proxy_process


async def test_stdout_lines_from_two_workers(origin: int, tmp_path: Path) -> None:
    cfg = simple_config(origin, settings={"workers": 2})
    cfg["telemetry"] = {"access_log": {"sink": {"kind": "stdout", "flush_interval_ms": 60000}}}
    async with proxy_process(cfg, tmp_path) as p:
        await p.wait_ready()
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                async with s.get(p.url(path=f"/echo?n={i}")) as r:
                    assert r.status == 200
        # The flush interval is a minute: only the drain on SIGTERM writes these lines.
        assert await p.stop() == 0
    records = [json.loads(line) for line in p.log().splitlines() if line.startswith("{")]
    assert sorted(r["path"] for r in records) == sorted(f"/echo?n={i}" for i in range(20))
