"""Run the real `tulle` CLI as a subprocess against a control plane's REST API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

TULLE = str(Path(sys.executable).parent / "tulle")
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
"""Passed on, so that `tulle` runs the code under test (a worktree's) and not the install."""


async def tulle(api: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tulle ARGS` with `TULLE_SERVER=api`."""
    proc = await asyncio.create_subprocess_exec(
        TULLE, *args, env={"TULLE_SERVER": api, "PATH": "/usr/bin:/bin", **PYTHONPATH},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
