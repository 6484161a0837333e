"""The namespace testbed: nodes reach each other over the bridge; crashed runs are cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from tests.support.netns import testbed  # noqa: F401

from tulle.net import netns
from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns


def namespaces() -> set[str]:
    return set(netns.list_namespaces())


def test_nodes_talk_over_the_bridge(testbed: Testbed) -> None:  # noqa: F811
    a = testbed.node("10.231.0.2/24")
    b = testbed.node("10.231.0.3/24")
    listener = b.popen([sys.executable, "-c",
                        "import socket; s = socket.create_server(('10.231.0.3', 7000)); "
                        "c, _ = s.accept(); c.sendall(b'hi from b')"])
    got = a.run([sys.executable, "-c",
                 "import socket, time\n"
                 "for _ in range(100):\n"
                 "    try:\n"
                 "        s = socket.create_connection(('10.231.0.3', 7000), timeout=5); break\n"
                 "    except ConnectionRefusedError:\n"
                 "        time.sleep(0.05)\n"
                 "print(s.recv(100).decode())"])
    assert got.stdout.strip() == "hi from b"
    listener.wait(timeout=10)
    # The node's only way out is the bridge: no default route, nothing of the host's.
    assert "default" not in a.run(["ip", "route"]).stdout


def test_close_removes_namespaces_and_processes(testbed: Testbed) -> None:  # noqa: F811
    node = testbed.node("10.231.0.2/24")
    sleeper = node.popen(["sleep", "300"])
    names = {ns.name for ns in testbed.namespaces}
    assert names <= namespaces()
    testbed.close()
    assert not names & namespaces()
    assert sleeper.poll() is not None


def test_namespaces_of_a_dead_run_are_removed_at_start() -> None:
    if (why := netns.missing_requirements()) is not None:
        pytest.skip(why)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}-0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        removed = netns.remove_stale()
        assert stale in removed
        assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], check=False, capture_output=True)


def test_namespaces_of_a_live_run_are_kept() -> None:
    if (why := netns.missing_requirements()) is not None:
        pytest.skip(why)
    with Testbed() as tb:
        ns = tb.namespace()
        assert ns.name not in netns.remove_stale()
        assert ns.name in namespaces()
    assert ns.name not in namespaces()


def host(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def test_the_host_namespace_is_left_alone(testbed: Testbed) -> None:  # noqa: F811
    links, routes = host("ip", "-o", "link"), host("ip", "route")
    testbed.node("10.231.0.2/24")
    testbed.node("10.231.0.3/24")
    assert host("ip", "-o", "link") == links
    assert host("ip", "route") == routes


CRASHING = r'''
import sys, time
from tulle.net.netns import Namespace, Testbed
tb = Testbed()
a = tb.node("10.231.0.2/24", "fd00:231::2/64")
b = tb.node("10.231.0.3/24")
sleeper = a.popen(["sleep", "300"], user=1001)
print(" ".join(ns.name for ns in tb.namespaces), sleeper.pid, flush=True)
time.sleep(300)
'''


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_run_killed_by_sigkill_is_cleaned_up_at_the_next_start() -> None:
    if (why := netns.missing_requirements()) is not None:
        pytest.skip(why)
    links = host("ip", "-o", "link")
    child = subprocess.Popen([sys.executable, "-c", CRASHING], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    *names, pid = child.stdout.readline().split()
    sleeper = int(pid)
    try:
        child.kill()  # SIGKILL: no atexit, no close()
        child.wait(timeout=10)
        assert set(names) <= namespaces()  # the crash left them behind
        assert not _gone(sleeper)
        with Testbed() as tb:  # the next start removes them
            assert not set(names) & namespaces()
            assert _gone(sleeper)
            tb.node("10.231.0.2/24")  # and the same addresses are usable again
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
    assert not any(n.startswith(f"{netns.PREFIX}{child.pid}-") for n in namespaces())
    assert host("ip", "-o", "link") == links  # no stray link in the host namespace either


def test_nodes_have_ipv6_on_the_bridge_and_run_processes_under_their_uid(
        testbed: Testbed) -> None:  # noqa: F811
    a = testbed.node("10.231.0.2/24", "fd00:231::2/64")
    b = testbed.node("10.231.0.3/24", "fd00:231::3/64")
    assert (a.address6, b.address6) == ("fd00:231::2", "fd00:231::3")
    listener = b.popen([sys.executable, "-c",
                        "import os, socket; s = socket.create_server(('fd00:231::3', 7000), "
                        "family=socket.AF_INET6); c, _ = s.accept(); "
                        "c.sendall(b'v6 %d' % os.getuid())"], user=1001)
    got = a.run([sys.executable, "-c",
                 "import socket, time, os\n"
                 "for _ in range(100):\n"
                 "    try:\n"
                 "        s = socket.create_connection(('fd00:231::3', 7000), timeout=5); break\n"
                 "    except ConnectionRefusedError:\n"
                 "        time.sleep(0.05)\n"
                 "print(s.recv(20).decode(), os.getuid())"], user=4242)
    assert got.stdout.split() == ["v6", "1001", "4242"]  # server's uid, then the client's
    listener.wait(timeout=10)
    with pytest.raises(ValueError, match="outside the testbed subnet"):
        testbed.node("10.231.0.4/24", "fd00:999::4/64")


REPLY = ("import os, socket, sys\n"
         "s = socket.create_server(('::', 7000), family=socket.AF_INET6, dualstack_ipv6=True)\n"
         "print('ready', flush=True)\n"
         "while True:\n"
         "    c, peer = s.accept()\n"
         "    c.sendall(sys.argv[1].encode() + b' ' + peer[0].removeprefix('::ffff:').encode())\n"
         "    c.close()\n")
ASK = ("import socket, sys\n"
       "with socket.create_connection((sys.argv[1], 7000), timeout=5) as s:\n"
       "    print(s.recv(100).decode())\n")


def test_pods_on_nodes_reach_each_other_across_nodes_in_both_families(
        testbed: Testbed) -> None:  # noqa: F811
    n1 = testbed.node("10.231.0.2/24", "fd00:231::2/64")
    n2 = testbed.node("10.231.0.3/24", "fd00:231::3/64")
    a = testbed.pod(n1, "10.232.1.2", "fd00:232::1:2")
    b = testbed.pod(n1, "10.232.1.3", "fd00:232::1:3")
    n3 = testbed.node("10.231.0.4/24", "fd00:231::4/64")  # a node added after the pods
    c = testbed.pod(n3, "10.232.3.2", "fd00:232::3:2")
    for pod, name in ((b, "b"), (c, "c"), (n2, "n2")):
        proc = pod.popen([sys.executable, "-c", REPLY, name], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"

    def ask(src: Namespace, dst: str) -> str:
        return src.run([sys.executable, "-c", ASK, dst], timeout=30).stdout.strip()

    assert ask(a, "10.232.1.3") == "b 10.232.1.2"          # same node
    assert ask(a, "10.232.3.2") == "c 10.232.1.2"          # across nodes, source kept
    assert ask(a, "fd00:232::3:2") == "c fd00:232::1:2"
    assert ask(c, "fd00:232::1:3") == "b fd00:232::3:2"
    assert ask(a, "10.231.0.3") == "n2 10.232.1.2"  # a pod reaches another node
    assert ask(n2, "10.232.3.2") == "c 10.231.0.3"  # and a node another node's pod
    # Pods route by default to their node; nodes have no default route: nothing leaves.
    assert "default via 169.254.1.1" in a.run(["ip", "route"]).stdout
    assert "default" not in n1.run(["ip", "route"]).stdout
    unreachable = a.run([sys.executable, "-c", ASK, "192.0.2.1"], check=False, timeout=30)
    assert unreachable.returncode != 0
    with pytest.raises(ValueError, match="outside the testbed pod subnet"):
        testbed.pod(n1, "10.231.0.9")


def test_python_for_a_uid_that_cannot_reach_the_interpreter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtualenv over an interpreter under a private home: the proxy's uid gets the system
    interpreter of the same version and this environment's site-packages."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp())  # (pytest's tmp_path sits in a 0700 directory)
    base.chmod(0o755)
    try:
        home = base / "home"
        (home / "bin").mkdir(parents=True)
        exe = home / "bin" / "python"
        exe.write_text("")
        exe.chmod(0o755)
        home.chmod(0o700)
        assert not netns._reachable(str(exe), 4242)
        assert netns._reachable(str(exe), os.stat(home).st_uid)  # its owner gets through
        home.chmod(0o755)
        assert netns._reachable(str(exe), 4242)
        monkeypatch.setattr(sys, "executable", str(exe))
        assert netns.python_for(4242) == (str(exe), [])
        home.chmod(0o700)
        py, paths = netns.python_for(4242)
        system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if os.path.exists(system):
            assert py == system and paths and all(os.path.isdir(p) for p in paths)
        else:
            assert (py, paths) == (str(exe), [])
    finally:
        shutil.rmtree(base)


def test_python_for_a_virtualenv_link_in_a_private_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtualenv made on the system's interpreter (ADR 0124) whose `bin/python` link sits
    in a directory the proxy's uid cannot traverse: the link's target is reachable, the link
    is not, so the proxy gets the system interpreter by its own path."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(system):
        pytest.skip(f"no {system} to link to")
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)
    try:
        venv = base / "venv"
        (venv / "bin").mkdir(parents=True)
        link = venv / "bin" / "python"
        link.symlink_to(system)
        monkeypatch.setattr(sys, "executable", str(link))
        assert netns.python_for(4242) == (str(link), [])  # every directory lets it through
        venv.chmod(0o700)
        assert netns._reachable(os.path.realpath(link), 4242)  # (the target alone would pass)
        py, paths = netns.python_for(4242)
        assert py == system and paths
    finally:
        venv.chmod(0o755)
        shutil.rmtree(base)


class _Stuck:
    """A started process that does not end in time, even after SIGKILL (a task in D state)."""

    pid = 2**22 + 1  # no such process: os.killpg says ProcessLookupError

    def poll(self) -> None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("stuck", timeout or 0)


def test_close_deletes_the_namespaces_even_when_a_process_does_not_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Hygiene audit (ADR 0105): a process still there 5 s after SIGKILL made `close()` raise
    TimeoutExpired before it deleted a single namespace."""
    monkeypatch.setattr(netns, "missing_requirements", lambda: None)
    monkeypatch.setattr(netns, "remove_stale", lambda: [])
    deleted: list[str] = []
    monkeypatch.setattr(netns, "_delete_namespace", deleted.append)
    tb = Testbed()
    tb.namespaces = [Namespace(tb, "tl-1-0"), Namespace(tb, "tl-1-1")]
    tb.processes = [_Stuck()]  # type: ignore[list-item]
    tb.close()
    assert deleted == ["tl-1-1", "tl-1-0"]


class _Clock:
    """A fake `time` for netns: sleeping and waiting advance it, nothing really waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Deaf:
    """A started process that ignores SIGTERM and ends only on SIGKILL."""

    def __init__(self, clock: _Clock, pid: int) -> None:
        self.clock, self.pid, self.killed = clock, pid, False

    def poll(self) -> int | None:
        return 0 if self.killed else None

    def wait(self, timeout: float | None = None) -> int:
        if self.killed:
            return 0
        self.clock.sleep(timeout or 0)
        raise subprocess.TimeoutExpired("deaf", timeout or 0)


def test_stale_processes_share_one_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hygiene audit (ADR 0105): ADR 0087 promised the processes of all stale namespaces one
    grace period together, but each pid that ignored SIGTERM got its own 3 s in turn: ten such
    processes held the next start for 30 s."""
    clock = _Clock()
    monkeypatch.setattr(netns, "time", clock)
    monkeypatch.setattr(netns, "_pid_alive", lambda pid: True)  # all of them ignore SIGTERM
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    pids = [2**22 + 10 + i for i in range(10)]  # (above pid_max: waitpid finds none of them)
    netns._stop_pids(pids, grace=3.0)
    assert clock.now <= 3.0 + 0.1
    assert sorted(sent) == sorted([(p, signal.SIGTERM) for p in pids]
                                  + [(p, signal.SIGKILL) for p in pids])


def test_close_gives_the_testbeds_processes_one_grace_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in `close()`: each process that ignored SIGTERM was waited for 5 s in turn
    before the next one's wait began (eleven in the demo: up to 55 s)."""
    clock = _Clock()
    monkeypatch.setattr(netns, "time", clock)
    monkeypatch.setattr(netns, "missing_requirements", lambda: None)
    monkeypatch.setattr(netns, "remove_stale", lambda: [])
    monkeypatch.setattr(netns, "_delete_namespace", lambda name: None)
    procs = [_Deaf(clock, 2**22 + 30 + i) for i in range(11)]

    def killpg(pid: int, sig: int) -> None:
        if sig == signal.SIGKILL:
            next(p for p in procs if p.pid == pid).killed = True

    monkeypatch.setattr(os, "killpg", killpg)
    tb = Testbed()
    tb.processes = procs  # type: ignore[assignment]
    tb.close()
    assert all(p.killed for p in procs)
    assert clock.now <= 5.0 + 0.1
