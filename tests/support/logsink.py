"""Reading what a proxy's access / flow log wrote to a file sink, field by field."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


def log_config(path: Path, **extra: Any) -> dict[str, Any]:
    """A `telemetry.access_log` / `flow_log` dict writing JSON lines to `path` promptly."""
    cfg: dict[str, Any] = {"sink": {"kind": "file", "path": str(path), "flush_interval_ms": 10}}
    cfg.update(extra)
    return cfg


async def read_records(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first `count` JSON records of `path`, once written (the writer thread flushes every
    10 ms here; bounded wait)."""
    async with asyncio.timeout(timeout):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= count:
                return [json.loads(line) for line in lines[:count]]
            await asyncio.sleep(0.01)


async def read_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    async with asyncio.timeout(timeout):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= count:
                return lines[:count]
            await asyncio.sleep(0.01)
