"""The reconnect schedule of a real proxy process across two control-plane outages (audit,
ADR 0108).

The agent backs off exponentially with full jitter (0.1 s doubling to 5 s) and a session that
got going was meant to reset that schedule.  It never did: a session only ends by raising, and
the reset sat on the path that returns.  After a first outage long enough to reach the cap, a
second outage was retried at uniform(0, 5 s) from its first attempt.  Measured from the
proxy's own debug log (one line per attempt)."""

from __future__ import annotations

import datetime
import re
import signal
from pathlib import Path

import pytest
from tests.support.controlplane import ControlPlaneProcess, eventually
from tests.support.sidecar_process import SidecarProcess, sidecar_processes

OUTAGE = "WARNING tulle.agent"
"""The one line an outage starts with (`dataplane/outage.py`); later attempts are DEBUG."""
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _attempts_after(log: str, marker: str, nth: int) -> list[float]:
    """Seconds from the `nth` line holding `marker` (an outage's first WARNING) to each
    reconnect attempt the agent logged after it."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if marker in line]
    if len(starts) < nth:  # (not logged yet: the test waits on this, `eventually`)
        return []
    i = starts[nth - 1]

    def at(line: str) -> float:
        m = _STAMP.match(line)
        assert m, line
        return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()

    t0 = at(lines[i])
    return [at(line) - t0 for line in lines[i + 1:]
            if "tulle.agent" in line and "Connection refused" in line]


@pytest.mark.timeout(120)
async def test_the_second_outage_is_retried_from_the_start_of_the_schedule(
        tmp_path: Path) -> None:
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path)
    cp.start()
    try:
        await cp.wait_ready()
        car = SidecarProcess(cp.api, cp.stream_port, "web-0", tmp_path)
        async with sidecar_processes(car):
            async def connected() -> bool:
                return bool((await cp.proxies()).get("shop/web-0", {}).get("connected"))

            await eventually(connected, timeout=20)
            assert cp.proc is not None
            # A first outage long enough for the backoff to reach its 5 s cap (~6 attempts).
            cp.proc.send_signal(signal.SIGKILL)
            cp.proc.wait(10)
            await eventually(lambda: len(_attempts_after(car.log(), OUTAGE, 1)) >= 6,
                             timeout=30)
            cp.start()
            await cp.wait_ready()
            await eventually(lambda: "connected again" in car.log(), timeout=20)
            # The second outage: its first attempts come at 0-0.2, 0-0.4, 0-0.8 s (1.4 s at
            # most), not at 0-5 s each.
            cp.proc.send_signal(signal.SIGKILL)
            cp.proc.wait(10)
            await eventually(lambda: len(_attempts_after(car.log(), OUTAGE, 2)) >= 3,
                             timeout=20)
            first = _attempts_after(car.log(), OUTAGE, 2)[:3]
            assert first[2] < 2.0, f"second outage retried at {first} s"
    finally:
        cp.kill()
