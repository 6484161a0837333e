"""A CPU quota for the proxy under test, so "at saturation" means the proxy was the limit.

Why (ADR 0077): on a two-CPU host the load generator and the origin share one CPU, and they
run out of it before a proxy as cheap as HAProxy does (HAProxy at 0.91-0.94 of its CPU at
its "maximum rate").  A proxy that is not saturated answers fewer requests per wake-up and
pays more system calls per request, so a CPU-per-request ratio against it decides nothing.
Giving each proxy the same fraction of its CPU through the kernel's CFS bandwidth control
(a cgroup v1 `cpu` group with `cpu.cfs_quota_us`) makes every proxy, HAProxy
included, the bottleneck of its run: the load side then has about twice the proxy's CPU, and
the proxy is throttled in most periods because it always has more work than its quota.
Whether it was is read back (`cpu.stat`: periods and throttled periods), not assumed.

Only what the benchmark starts is moved, and only for the saturation rounds: each thread goes
into the group and back to the cgroup it came from.  A group is named after the runner's pid,
removed when the run ends, and a group left by a runner that died (its pid gone) is removed
at the next start (`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "tulle-bench-"
PERIOD_US = 100_000
"""The bandwidth period: the kernel's default 100 ms.  A shorter one stalls the load for less
time but throttles the proxy more often, and each time it resumes it refills its caches;
that costs a proxy with a large working set (CPython's) more than HAProxy.  Measured, the
medians lean that way (10 ms against 100 ms, three rounds each on the 2-CPU EPYC VM: Tulle
23.97 against 22.47 µs per request, HAProxy 19.25 against 18.70) but the rounds' spreads
overlap (ADR 0077's table), so the default was kept rather than chosen by them."""


def find_hierarchy(mounts: str | None = None) -> Path | None:
    """The cgroup v1 `cpu` controller's mount point, from /proc/self/mounts (None: not
    mounted).  cgroup v2's `cpu.max` would do the same job; it is not written yet (on a v2-only
    host the run falls back to the maximum rate and says so: ADR 0077)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            return Path(fields[1])
    return None


def why_not(hierarchy: Path | None) -> str | None:
    """Why a quota cannot be set here (None: it can)."""
    if hierarchy is None:
        return "no cgroup v1 hierarchy with the cpu controller is mounted"
    if os.geteuid() != 0:
        return "not root: cgroups cannot be created"
    if not os.access(hierarchy, os.W_OK):
        return f"{hierarchy} is not writable"
    return None


def remove_stale(hierarchy: Path) -> list[str]:
    """Remove the groups of runners that are gone (their threads back to the root first);
    the names removed."""
    removed = []
    for group in sorted(hierarchy.glob(PREFIX + "*")):
        pid = group.name[len(PREFIX):]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for tid in _tasks(group):
            with contextlib.suppress(OSError):
                _attach(hierarchy, tid)
        with contextlib.suppress(OSError):
            group.rmdir()
            removed.append(group.name)
    return removed


@dataclass
class Throttling:
    """What the kernel says about a group's bandwidth over one phase."""

    periods: int = 0
    throttled: int = 0

    @property
    def share(self) -> float:
        """The share of periods in which the group wanted more CPU than its quota."""
        return self.throttled / self.periods if self.periods else 0.0


class CpuQuota:
    """One group allowing `share` of a CPU (`with` creates and removes it)."""

    def __init__(self, hierarchy: Path, share: float) -> None:
        if not 0.05 <= share <= 1.0:
            raise ValueError(f"a CPU quota of {share} is outside 0.05..1")
        self.hierarchy = hierarchy
        self.share = share
        self.group = hierarchy / f"{PREFIX}{os.getpid()}"

    def __enter__(self) -> CpuQuota:
        remove_stale(self.hierarchy)
        self.group.mkdir(exist_ok=True)
        try:
            (self.group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.group / "cpu.cfs_quota_us").write_text(str(round(self.share * PERIOD_US)))
        except OSError:  # (a parent group with a smaller quota refuses ours: EINVAL)
            with contextlib.suppress(OSError):
                self.group.rmdir()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for tid in _tasks(self.group):
            with contextlib.suppress(OSError):
                _attach(self.hierarchy, tid)
        with contextlib.suppress(OSError):
            self.group.rmdir()

    def stat(self) -> Throttling:
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (self.group / "cpu.stat").read_text().splitlines():
                name, _, value = line.partition(" ")
                if value.strip().isdigit():
                    fields[name] = int(value)
        return Throttling(fields.get("nr_periods", 0), fields.get("nr_throttled", 0))

    @contextlib.contextmanager
    def holding(self, pids: Sequence[int]) -> Iterator[Throttling]:
        """Every thread of `pids` in the group while the block runs, then back where it was
        (a thread started meanwhile: where its process's main thread was); the yielded
        `Throttling` is filled in with the block's periods when it ends.  Raises when a live
        thread cannot be moved, or none is: a round the quota did not hold must not be
        reported as one it did."""
        before = self.stat()
        homes: dict[int, Path] = {}
        process_homes: dict[int, Path] = {}
        for pid in pids:
            for tid in _threads(pid):
                home = _cgroup_of(tid, self.hierarchy)
                if home is None:
                    continue  # (a thread that just ended)
                try:
                    _attach(self.group, tid)
                except OSError as exc:
                    if Path(f"/proc/{tid}").exists():
                        self._release(homes, process_homes)
                        raise RuntimeError(f"thread {tid} of {pid} cannot enter "
                                           f"{self.group}: {exc}") from exc
                    continue
                homes[tid] = home
                process_homes.setdefault(pid, home)
        if not homes:
            raise RuntimeError(f"no thread of {list(pids)} entered {self.group}")
        got = Throttling()
        try:
            yield got
        finally:
            after = self.stat()
            got.periods = after.periods - before.periods
            got.throttled = after.throttled - before.throttled
            self._release(homes, process_homes)

    def _release(self, homes: dict[int, Path], process_homes: dict[int, Path]) -> None:
        """Every thread in the group back to its own cgroup, or its process's."""
        for tid in _tasks(self.group):
            home = homes.get(tid) or process_homes.get(_tgid(tid), self.hierarchy)
            with contextlib.suppress(OSError):
                _attach(home, tid)


def _tgid(tid: int) -> int:
    """The process a thread belongs to (/proc/TID/status `Tgid`; 0 when it is gone)."""
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _tasks(group: Path) -> list[int]:
    try:
        return [int(t) for t in (group / "tasks").read_text().split()]
    except OSError:
        return []


def _attach(group: Path, tid: int) -> None:
    (group / "tasks").write_text(str(tid))


def _cgroup_of(tid: int, hierarchy: Path) -> Path | None:
    """The `cpu` group `tid` is in now (/proc/TID/cgroup)."""
    try:
        text = Path(f"/proc/{tid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return hierarchy / path.lstrip("/")
    return None


def open_quota(share: float | None) -> tuple[CpuQuota | None, str]:
    """A quota of `share` of a CPU if this host can set one, and what the run should record:
    how saturation was reached (`cpu quota 0.5 of a CPU`) or why it could not be."""
    if share is None:
        return None, "maximum rate (no quota asked for)"
    hierarchy = find_hierarchy()
    why = why_not(hierarchy)
    if why is not None or hierarchy is None:
        return None, f"maximum rate (no CPU quota: {why})"
    return CpuQuota(hierarchy, share), f"CPU quota of {share:g} of a CPU per proxy"


def enter_quota(stack: contextlib.ExitStack, share: float | None) -> tuple[CpuQuota | None, str]:
    """`open_quota`, its group created on `stack` (removed when the stack closes); when the
    kernel refuses the quota (a parent group's smaller one: EINVAL), no quota and why."""
    quota, method = open_quota(share)
    if quota is None:
        return None, method
    try:
        stack.enter_context(quota)
    except OSError as exc:
        return None, f"maximum rate (the CPU quota could not be set: {exc})"
    return quota, method
