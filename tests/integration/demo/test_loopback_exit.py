"""The loopback demo (`tulle demo --loopback`, what runs without root) leaves no process behind
when it is stopped by SIGTERM or killed by SIGKILL (hygiene audit, ADR 0105).

Before, its control plane, apps and sidecars (seven processes, each in a session of its own)
outlived a SIGKILL for ever, and SIGTERM killed the demo without its clean-up, with the same
result; nothing at the next start removed them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

SRC = str(Path(__file__).resolve().parents[3] / "src")


def children(pid: int) -> set[int]:
    """The direct children of `pid`, from every thread's /proc list."""
    out: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out |= {int(p) for p in (task / "children").read_text().split()}
    except OSError:
        pass
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_demo(tmp: Path) -> tuple[subprocess.Popen[bytes], set[int]]:
    """The loopback demo, once it runs its control plane, apps and sidecars (7 processes);
    its directory (kept for its logs) under `tmp`."""
    pytest.importorskip("aiohttp")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tulle.cli.main", "demo", "--loopback", "--duration", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": SRC, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 45
    kids: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        kids = {p for p in children(proc.pid) if alive(p)}
        if len(kids) >= 7:
            return proc, kids
        time.sleep(0.1)
    proc.kill()
    proc.wait(5)
    pytest.fail(f"the loopback demo did not start its 7 processes (saw {len(kids)})")


def assert_gone(kids: set[int], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(alive(p) for p in kids):
        time.sleep(0.1)
    left = [p for p in kids if alive(p)]
    for p in left:  # (the test's own clean-up, so a failure leaves nothing either)
        os.kill(p, signal.SIGKILL)
    assert left == [], f"outlived the demo: {left}"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_loopback_demos_processes_do_not_outlive_it(sig: signal.Signals,
                                                        tmp_path: Path) -> None:
    proc, kids = start_demo(tmp_path)
    proc.send_signal(sig)
    rc = proc.wait(30)
    assert_gone(kids)
    if sig == signal.SIGTERM:  # through the demo's own clean-up, as for Ctrl-C
        assert rc == 130
