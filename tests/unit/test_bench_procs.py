"""A CPU's busy time for the benchmarks' contention figures: from the cpuidle driver's measured
idle residency where there is one (not /proc/stat's tick samples, which a 1,000 req/s load
runs in step with), else /proc/stat."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from bench.procs import cpu_busy, idle_seconds


def _states(root: Path, cpu: int, *micros: int) -> None:
    for n, us in enumerate(micros):
        d = root / f"cpu{cpu}" / "cpuidle" / f"state{n}"
        d.mkdir(parents=True)
        (d / "time").write_text(f"{us}\n")


def test_busy_is_the_clock_less_the_measured_idle_residency(tmp_path: Path) -> None:
    _states(tmp_path, 0, 2_000_000, 30_500_000)  # (poll, halt)
    assert idle_seconds(0, tmp_path) == 32.5
    assert idle_seconds(1, tmp_path) is None  # no driver for it: /proc/stat's ticks
    before = time.monotonic()
    busy = cpu_busy(tmp_path)
    assert before - 32.5 <= busy[0][0] <= time.monotonic() - 32.5


@pytest.mark.skipif(idle_seconds(0) is None, reason="this kernel has no cpuidle driver")
def test_a_cpu_kept_busy_reads_busy() -> None:
    """A spin pinned to CPU 0 for 0.3 s reads at least that busy (anything else there adds)."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        b0 = cpu_busy()[cpu][0]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.3:
            pass
        b1 = cpu_busy()[cpu][0]
    finally:
        os.sched_setaffinity(0, old)
    assert b1 - b0 >= 0.25, b1 - b0
