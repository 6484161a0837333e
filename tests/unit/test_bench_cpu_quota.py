"""The benchmark's CPU quota (ADR 0077): the kernel holds a busy process to its share, the
throttling is read back, every thread goes home afterwards, and no group is left behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.cpu_quota import (
    PREFIX,
    CpuQuota,
    _cgroup_of,
    find_hierarchy,
    open_quota,
    remove_stale,
    why_not,
)
from bench.measure import saturation

MOUNTS = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
"""


def test_the_cpu_controller_is_found_where_it_is_mounted() -> None:
    assert find_hierarchy(MOUNTS) == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert find_hierarchy(MOUNTS.replace("cpu,cpuacct 0 0", "cpuacct 0 0")) is None
    assert why_not(None) is not None and "cpu controller" in why_not(None)  # type: ignore[operator]


def test_no_quota_asked_for_means_the_maximum_rate() -> None:
    quota, method = open_quota(None)
    assert quota is None and method.startswith("maximum rate")
    with pytest.raises(ValueError):
        CpuQuota(Path("/nonexistent"), 1.5)


def test_saturation_figures_come_from_the_quota_round_when_there_is_one() -> None:
    free = saturation(0.98, 1.0, 40_000, None)
    assert free == {"cpu_us_per_req_sat": 24.5, "cpu_util_sat": 0.98}
    held = saturation(0.98, 1.0, 40_000, {"proxy_cpu_s": 0.5, "wall_s": 1.0, "requests": 20_000,
                                         "cpu_quota": 0.5, "throttled_share": 0.97})
    assert held["cpu_us_per_req_sat"] == 25.0  # under the quota
    assert held["cpu_util_sat"] == 1.0  # the share of its quota
    assert held["cpu_us_per_req_max_rate"] == 24.5 and held["cpu_util_max_rate"] == 0.98
    assert held["throttled_share_sat"] == 0.97


HIERARCHY = find_hierarchy()
needs_cgroup = pytest.mark.skipif(why_not(HIERARCHY) is not None,
                                  reason=f"no CPU quota here: {why_not(HIERARCHY)}")


@contextlib.contextmanager
def _running(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the block, killed and reaped after it."""
    child = subprocess.Popen(argv)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def _dead_pid() -> int:
    """The pid of a process that has exited (its runner, or its threads, gone)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@needs_cgroup
def test_a_busy_process_is_held_to_its_share_and_goes_home_after() -> None:
    assert HIERARCHY is not None
    with _running([sys.executable, "-c", "while True: pass"]) as spin:
        home = _cgroup_of(spin.pid, HIERARCHY)
        with CpuQuota(HIERARCHY, 0.2) as quota:
            group = quota.group
            assert group.is_dir() and (group / "cpu.cfs_quota_us").read_text().strip() == "20000"
            before = _cpu_s(spin.pid)
            start = time.monotonic()
            with quota.holding([spin.pid]) as throttling:
                assert _cgroup_of(spin.pid, HIERARCHY) == group
                time.sleep(1.0)
            used = (_cpu_s(spin.pid) - before) / (time.monotonic() - start)
            assert _cgroup_of(spin.pid, HIERARCHY) == home  # back where it was
            # held to 0.2 of a CPU (ticks are 10 ms; unheld it would use ~1.0)
            assert used < 0.45, used
            assert throttling.periods >= 5 and throttling.share > 0.5, throttling
        assert not group.exists()


@needs_cgroup
def test_a_group_left_by_a_dead_runner_is_removed_at_the_next_start() -> None:
    assert HIERARCHY is not None
    stale = HIERARCHY / f"{PREFIX}{_dead_pid()}"
    stale.mkdir()
    ours = HIERARCHY / f"{PREFIX}{os.getpid()}"
    try:
        assert stale.name in remove_stale(HIERARCHY)
        assert not stale.exists()
        assert ours.name not in remove_stale(HIERARCHY)  # a live runner's group stays
    finally:
        for g in (stale, ours):
            if g.exists():
                g.rmdir()


@needs_cgroup
def test_a_thread_started_while_held_goes_home_with_its_process() -> None:
    assert HIERARCHY is not None
    with _running([sys.executable, "-c",
                   "import threading, time\n"
                   "time.sleep(0.4)\n"  # started after the hold began
                   "t = threading.Thread(target=time.sleep, args=(5,))\n"
                   "t.start(); t.join()\n"]) as child:
        home = _cgroup_of(child.pid, HIERARCHY)
        with CpuQuota(HIERARCHY, 0.5) as quota, quota.holding([child.pid]):
            deadline = time.monotonic() + 5
            while len(os.listdir(f"/proc/{child.pid}/task")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
            assert len(tids) == 2 and all(_cgroup_of(t, HIERARCHY) == quota.group for t in tids)
        assert all(_cgroup_of(t, HIERARCHY) == home for t in tids)


@needs_cgroup
def test_a_hold_that_moves_no_thread_is_refused() -> None:
    assert HIERARCHY is not None
    with CpuQuota(HIERARCHY, 0.5) as quota:
        with pytest.raises(RuntimeError, match="no thread"), quota.holding([_dead_pid()]):
            pass
        assert not (quota.group / "tasks").read_text().split()
