"""`tulle demo` end to end, as a user runs it: a subprocess building namespaces, a control plane,
four sidecars and a node agent, traffic through mTLS, a 90/10 canary, and nothing left after
it exits — by --duration or by SIGINT mid-run (issue 11 item 6, ADR 0049).

The API port is a free one (`--api-port`), so a suite or a demo running at the same time is not
disturbed; the proxy stream's port lives inside the demo's own namespaces.  The CLI call while
it runs passes only `--server`: the token comes from the runtime admin token file the demo
publishes (here under a temporary XDG_RUNTIME_DIR).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.support.netns import require_tools

from tulle.net.ports import unused_port

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

SRC = str(Path(__file__).resolve().parents[2] / "src")
TULLE = [sys.executable, "-m", "tulle.cli.main"]


def free_port() -> int:
    return unused_port()  # (not port 0's pick: see tulle.net.ports)


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip() for line in out.stdout.splitlines()}


class Demo:
    """`tulle demo` in a subprocess, its output collected line by line."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.api = free_port()
        self.env = {**os.environ, "PYTHONPATH": SRC, "XDG_RUNTIME_DIR": str(tmp)}
        self.token = tmp / "tulle" / "admin-token"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*TULLE, "demo", "--api-port", str(self.api), "--interval", "3", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, limit: float = 90.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"tulle demo exited ({self.proc.returncode}):\n{self.output}")
            time.sleep(0.1)
        pytest.fail(f"no {pattern!r} in the demo's output:\n{self.output}")

    def namespaces(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False).stdout
        return [ln.split()[0] for ln in out.splitlines()
                if ln.startswith(f"tl-{self.proc.pid}-")]

    def processes(self) -> dict[int, str]:
        """Every process the demo started and keeps (those in its namespaces and its own
        children), by pid with its start time, so a reused pid is not taken for one of them."""
        pids: set[int] = set()
        for ns in self.namespaces():
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                 check=False)
            pids |= {int(p) for p in out.stdout.split()}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            pids |= {int(p) for p in (task / "children").read_text().split()}
        return {p: started for p in pids if (started := start_time(p))
                and b"tulle" in cmdline(p)}

    def finish(self, limit: float = 120.0) -> int:
        rc = self.proc.wait(timeout=limit)
        self._reader.join(10)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def cmdline(pid: int) -> bytes:
    """/proc/PID/cmdline; b'' once the process is gone (it may exit between the listing of a
    namespace's pids and this read: ESRCH, a ProcessLookupError, as a CI run met)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (after the command name, which may hold spaces); '' once
    the process is gone or a zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def assert_all_gone(demo: Demo, pids: dict[int, str], links: set[str]) -> None:
    assert demo.namespaces() == [], demo.namespaces()
    deadline = time.monotonic() + 5  # a SIGKILL lands a moment after it is sent
    while True:
        alive = [pid for pid, started in pids.items() if start_time(pid) == started]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert alive == [], f"still running: {[(p, cmdline(p)) for p in alive]}"
    assert not Path(f"/tmp/tulle-demo-ns-{demo.proc.pid}").exists()
    assert not demo.token.exists()
    assert host_links() == links  # nothing was created in (or left in) the host's namespace


def stat_rps(output: str, service: str) -> float:
    m = re.search(rf"^{re.escape(service)}\s+\d+\s+\S+\s+([\d.]+)rps", output, re.M)
    assert m, f"no stat row for {service}:\n{output}"
    return float(m.group(1))


GET = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def pod_get(netns: str, url: str) -> tuple[int, str]:
    """GET `url` from inside a pod, as an unmodified program would (its resolver, its socket)."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", GET, url],
                         capture_output=True, text=True, timeout=30, check=True,
                         env={"PATH": os.environ["PATH"]})
    code, _, body = out.stdout.partition(" ")
    return int(code), body


@pytest.fixture
def demo_env() -> None:
    require_tools("ip", "iptables", "iptables-restore", "ss", "setpriv")
    pytest.importorskip("grpc")
    pytest.importorskip("aiohttp")


@pytest.mark.usefixtures("demo_env")
def test_the_demo_meshes_the_shop_and_leaves_nothing(tmp_path: Path) -> None:
    links = host_links()
    demo = Demo(tmp_path, "--duration", "15", "--rps", "30")
    try:
        demo.wait_for(r"^Logs: ")
        pids = demo.processes()
        assert len(pids) >= 10, pids  # control plane, 5 sidecars + an agent, 6 apps
        # `tulle` from another shell: only --server (not the default port here); the token
        # comes from the runtime file.
        got = subprocess.run([*TULLE, "get", "proxies", "--server",
                              f"http://127.0.0.1:{demo.api}"], capture_output=True, text=True, check=False,
                             env={**demo.env, "TULLE_TOKEN_FILE": ""}, timeout=30)
        assert got.returncode == 0, got.stderr
        connected = [ln.split()[1] for ln in got.stdout.splitlines()[1:]
                     if ln.split()[2:3] == ["yes"]]
        assert sorted(connected) == ["catalog-v1-0", "catalog-v2-0", "flaky-0", "inventory-0",
                                     "load-0", "web-0"], got.stdout
        # An ordinary client inside load-0's pod, by service name: web answers; the catalog
        # refuses anyone but web (AuthorizationPolicy catalog-callers), enforced server-side.
        netns = re.search(r"^  load-0\s+\S+\s+node-1\s+sidecar\s+(tl-\S+)", demo.output, re.M)
        assert netns, demo.output
        assert pod_get(netns.group(1), "http://web.shop.svc.cluster.local/")[0] == 200
        status, body = pod_get(netns.group(1), "http://catalog.shop.svc.cluster.local/items/1")
        assert status == 403 and "catalog-callers" in body, (status, body)
        demo.wait_for(r"^\s+t=\s+\d+s\s+web\s+[1-9]")  # a live line with traffic
        assert demo.finish() == 0, demo.output
    finally:
        demo.stop()
    out = demo.output
    # The build says each step as it is done, with the time since it began.
    steps = re.findall(r"^\s+\d+\.\d s  (.+)$", out, re.M)
    assert steps[:3] == ["network: 2 nodes and 6 pods as namespaces, a bridge in its own "
                         "namespace", "control plane up (SQLite store, stream inside the "
                         "testbed)", "Services, routes and policies applied"], steps
    assert "load-0: traffic started" in steps, steps
    # Every server's proxy took its connections on the mTLS chain, none in plaintext.
    for pod in ("web-0", "catalog-v1-0", "inventory-0", "catalog-v2-0", "flaky-0"):
        m = re.search(rf"^\s+{pod}\s+mtls=(\d+)\s+plaintext=(\d+)", out, re.M)
        assert m and int(m.group(1)) > 0 and m.group(2) == "0", (pod, out)
    # The 90/10 canary over the last 30 s, as the control plane aggregated the proxies' reports.
    v1, v2 = stat_rps(out, "catalog-v1"), stat_rps(out, "catalog-v2")
    assert v1 + v2 > 5 and 0.04 <= v2 / (v1 + v2) <= 0.18, (v1, v2, out)
    # gRPC through the mesh; flaky's 503s retried away (its own proxy served ~70% as 2xx).
    assert stat_rps(out, "inventory") > 5
    flaky = re.search(r"^flaky\s+\d+\s+([\d.]+)%", out, re.M)
    assert flaky and float(flaky.group(1)) >= 97.0, out
    assert re.search(r"flaky served\s+[4-8]\d\.\d%", out), out
    assert_all_gone(demo, pids, links)


@pytest.mark.usefixtures("demo_env")
def test_sigint_mid_run_cleans_everything_up(tmp_path: Path) -> None:
    links = host_links()
    demo = Demo(tmp_path)  # no --duration: until Ctrl-C
    try:
        demo.wait_for(r"^\s+t=\s+\d+s")
        pids = demo.processes()
        assert demo.token.exists()
        demo.proc.send_signal(signal.SIGINT)
        assert demo.finish(60) == 0, demo.output
    finally:
        demo.stop()
    assert "stopped every process, removed the namespaces" in demo.output
    assert_all_gone(demo, pids, links)


def test_loopback_fallback_says_why(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    out = subprocess.run([*TULLE, "demo", "--loopback", "--duration", "2", "--rps", "5"],
                         capture_output=True, text=True, timeout=150, check=False,
                         env={**os.environ, "PYTHONPATH": SRC, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "running on loopback with explicit listeners (--loopback was given)" in out.stderr
    assert "mTLS (ADR 0033)" in out.stdout and "stopped" in out.stdout


@pytest.mark.usefixtures("demo_env")
def test_sigint_while_building_stops_the_build_and_cleans_up(tmp_path: Path) -> None:
    links = host_links()
    demo = Demo(tmp_path)
    try:
        demo.wait_for(r"building the network")
        deadline = time.monotonic() + 30  # until the first sidecar is being started
        while time.monotonic() < deadline and len(demo.processes()) < 3:
            time.sleep(0.1)
        pids = demo.processes()
        assert pids, demo.output
        demo.proc.send_signal(signal.SIGINT)
        assert demo.finish(60) == 130, demo.output
    finally:
        demo.stop()
    assert "interrupted while building" in demo.output
    assert "Logs:" not in demo.output  # it never got to the banner
    assert_all_gone(demo, pids, links)


@pytest.mark.usefixtures("demo_env")
def test_after_a_crash_the_control_plane_dies_and_the_next_start_removes_the_rest(
        tmp_path: Path) -> None:
    from tulle.demo.topology import remove_stale_state
    from tulle.net.netns import remove_stale

    links = host_links()
    demo = Demo(tmp_path)
    try:
        demo.wait_for(r"^Logs: ")
        pids = demo.processes()
        cp = {p for p in pids
              if b"control-plane\x00run" in cmdline(p)}
        assert len(cp) == 1
        demo.proc.kill()  # SIGKILL: no cleanup of its own
        demo.finish(10)
        # The control plane follows its parent (parent-death signal): the API port is free.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in cp):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{p}").exists() for p in cp)
        assert demo.namespaces(), "the namespaces outlive a SIGKILL until the next start"
        # What the next `tulle demo` does first (Testbed() and Topology.start()):
        removed = remove_stale()
        assert set(demo.namespaces()) == set() and removed
        assert Path(f"/tmp/tulle-demo-ns-{demo.proc.pid}") in remove_stale_state()
    finally:
        demo.stop()
    demo.token.unlink()  # a crashed demo's token file stays until a control plane rewrites it
    assert_all_gone(demo, pids, links)


@pytest.mark.usefixtures("demo_env")
def test_a_second_demo_on_the_same_runtime_dir_refuses_and_leaves_the_first_alone(
        tmp_path: Path) -> None:
    """Hygiene audit (ADR 0105): two demos on other API ports both published their admin
    token to the one runtime token file; the second overwrote the first's, and the first,
    still building, failed (`tulle token issue ... unauthorized`).  The second now refuses at
    once, naming the reason, and the first runs to its end untouched."""
    links = host_links()
    first = Demo(tmp_path, "--duration", "2")
    try:
        first.wait_for(r"network: .* namespaces")  # past the start: it holds its claim
        ours = first.namespaces()
        second = Demo(tmp_path)
        try:
            assert second.finish(60) == 1, second.output
        finally:
            second.stop()
        assert "another tulle demo" in second.output, second.output
        assert "removed the namespaces" not in second.output  # it made none: it says none
        assert second.namespaces() == []
        assert set(ours) <= set(first.namespaces())  # nothing of the first's was removed
        pids = first.processes()
        assert first.finish(120) == 0, first.output
    finally:
        first.stop()
    assert "Logs:" in first.output
    assert_all_gone(first, pids, links)
