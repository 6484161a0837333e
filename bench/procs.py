"""Processes the benchmark starts, and what /proc says about them.

Every process runs in its own session (so its own process group, children included) and is
registered with a `ProcessSet`; leaving the `with` block — normally, on an exception or on
Ctrl-C — sends SIGTERM to each group, then SIGKILL to what is still there.  CPU time and
resident memory are read from /proc so the same numbers can be taken for a Python proxy, a
threaded C proxy and a master/worker C proxy alike (summed over the process tree).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from tulle.net.ports import unused_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    return unused_port()  # (not port 0's pick: see tulle.net.ports)


class Proc:
    """One started command (its process group), with its log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, grace: float = 3.0) -> None:
        if self.popen.poll() is not None:
            self._reap_group()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(grace)
        self._reap_group()

    def _reap_group(self) -> None:
        """Children that outlived their leader (nginx workers) still belong to the group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


class ProcessSet:
    """Owns every process the benchmark starts; stops them all on exit, in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], *, cpu: int | None = None,
              env: dict[str, str] | None = None) -> Proc:
        cmd = list(argv)
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            p = self.procs.pop()
            with contextlib.suppress(Exception):
                p.stop()

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


def wait_port(port: int, proc: Proc, timeout: float = 15.0) -> None:
    """Until `port` accepts connections; raises if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout}s: {proc.tail()}")


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """One blocking HTTP/1.1 GET; (status, body).  Used for readiness and sanity checks."""
    status, _head, body = http_get_full(port, path, timeout)
    return status, body


def http_get_full(port: int, path: str = "/", timeout: float = 2.0,
                  headers: tuple[str, ...] = ()) -> tuple[int, bytes, bytes]:
    """One blocking HTTP/1.1 GET (with `headers`, each `Name: value`); (status, raw response
    head, body)."""
    extra = "".join(f"{h}\r\n" for h in headers)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
                  .encode())
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head, body


# -- /proc ----------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx master + workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _threads(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """(precise, ticks): CPU seconds used so far by `pids`, summed.

    *precise* is the scheduler's run time (/proc/PID/task/TID/schedstat, nanoseconds);
    *ticks* is utime+stime from /proc/PID/stat (clock ticks, 10 ms resolution).  Both count user
    and kernel time; the first is precise enough for a 4 s run at 1,000 rps.
    """
    precise = 0
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except OSError:
            continue
        for tid in _threads(pid):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    precise += int(f.read().split()[0])
            except OSError:
                continue
    return precise / 1e9, ticks / CLK_TCK


def compiled(pids: Sequence[int]) -> bool:
    """Whether Tulle's compiled hot path (the mypyc group library) is mapped into any of
    `pids`: a proxy started while its build is stale (the source changed since `make
    native`) runs the Python source instead, at about twice the CPU per request."""
    for pid in pids:
        try:
            if "tulle_native__mypyc" in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            continue
    return False


CPUIDLE = Path("/sys/devices/system/cpu")


def idle_seconds(cpu: int, root: Path = CPUIDLE) -> float | None:
    """Seconds `cpu` spent in its idle states since boot, from the cpuidle driver's own
    residency counters (microseconds, measured, not sampled); None without a cpuidle driver."""
    total, found = 0, False
    for state in sorted((root / f"cpu{cpu}" / "cpuidle").glob("state*")):
        try:
            total += int((state / "time").read_text())
            found = True
        except (OSError, ValueError):
            continue
    return total / 1e6 if found else None


def cpu_busy(root: Path = CPUIDLE) -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, steal) seconds on a clock whose differences are what counts (all
    processes, not just ours).

    Busy is `CLOCK_MONOTONIC` less the cpuidle driver's idle residency where the kernel has
    one (`idle_seconds`), else /proc/stat's busy ticks.  Not /proc/stat first: its per-CPU
    figures are sampled at the scheduler tick, and a fixed-rate load of 1,000 req/s runs in
    step with a 1 ms tick.  On the 2-CPU VM, in one `bench.netns` phase whose two sidecars
    used 30% of CPU 0 (the residency counters, and their CPU per request x the rate),
    /proc/stat said 84-91%; in another phase, 2 ticks for 52 of the proxies' own: it reported
    other work on the proxy CPU that was not there, or missed the proxies.  The residency
    counters are updated when a CPU leaves an idle state, so a reading taken while the CPU is
    idle lacks the idle time in progress (at 1,000 req/s, a millisecond or so).  Steal stays
    /proc/stat's (no other source; sampled, as the hypervisor reports it)."""
    out: dict[int, tuple[float, float]] = {}
    now = time.monotonic()
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            cpu = int(name[3:])
            v = [int(x) for x in vals]
            idle = v[3] + v[4]  # idle + iowait
            steal = v[7] if len(v) > 7 else 0
            resident = idle_seconds(cpu, root)
            busy = (now - resident if resident is not None
                    else (sum(v[:8]) - idle - steal) / CLK_TCK)
            out[cpu] = (busy, steal / CLK_TCK)
    return out


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """Samples the summed VmRSS of `pids` every `interval` seconds on a thread; keeps the peak."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pids))
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pids))

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
