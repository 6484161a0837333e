"""Run the real `tulle` CLI as a subprocess against a control plane's REST API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

TULLE = str(Path(sys.executable).parent / "tulle")
PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
"""Passed on, so that `tulle` runs the code under test (a worktree's) and not the install."""


_ADMIN = object()


async def tulle(api: str, *args: str, stdin: str | None = None,
                token: str | None | object = _ADMIN,
                env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tulle ARGS` with `TULLE_SERVER=api` and `TULLE_TOKEN`:
    by default the admin token of the control plane at `api`; `token=None` sends none (HOME
    points nowhere, so no token file is found either).  `env` adds variables."""
    from tests.support.controlplane import admin_token

    value = admin_token(api) if token is _ADMIN else token
    base = {"TULLE_SERVER": api, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
            **PYTHONPATH, **(env or {})}
    if isinstance(value, str):
        base["TULLE_TOKEN"] = value
    proc = await asyncio.create_subprocess_exec(
        TULLE, *args, env=base,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
