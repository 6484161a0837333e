"""The demo's network: namespaces, the control plane, sidecars, the node agent, the apps.

    host namespace:  tulle control-plane run   API 127.0.0.1:15681 (the CLI's default)
                       └─ stream socket, opened INSIDE [cp 10.231.0.10] :15680 (--stream-fd)
    [bridge] ── [cp 10.231.0.10] ── [node-1 10.231.0.2] ── pods web-0, catalog-v1-0,
                                                            inventory-0, load-0 (a sidecar
                                                            each, `tulle iptables apply`)
                                 ── [node-2 10.231.0.3] ── ONE agent for catalog-v2-0 and
                                                            flaky-0 (`tulle iptables node apply`)

Nothing is routed between the host's namespace and the testbed: the control plane's process
holds one listening socket that was created inside the `cp` namespace (`tulle.net.nsock`), so
proxies reach the stream at 10.231.0.10:15680 and `tulle` in another shell reaches the API at
127.0.0.1:15681, each in its own namespace (ADR 0049).  Proxies run as uid 1337 (excluded from
interception), apps as uid 1000.  Everything is removed by `close()`; after a crash the
testbed's stale cleanup removes the namespaces at the next start, and the control plane dies
with the demo (parent-death signal).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import yaml

from tulle.cli.credentials import runtime_admin_token_file
from tulle.demo import mesh
from tulle.demo.mesh import NAMESPACE, Pod
from tulle.net import nsock
from tulle.net.netns import Namespace, Testbed, remove_stale

PROXY_UID: Final = 1337
APP_UID: Final = 1000
CP_ADDRESS: Final = "10.231.0.10"
NODES: Final = {"node-1": "10.231.0.2", "node-2": "10.231.0.3"}
CALLS: Final = {
    "web-0": ("outbound|80||catalog-v1.shop", "outbound|80||catalog-v2.shop",
              "outbound|80||flaky.shop", "outbound|50051||inventory.shop"),
    "load-0": ("outbound|80||web.shop",),
}
"""The clusters a caller's sidecar must have a healthy endpoint in before traffic starts, so
the first summaries are not skewed by a backend still registering (a 90/10 split that shows
100/0 for its first seconds)."""
STATE_PREFIX: Final = "tulle-demo-ns-"
SRC: Final = str(Path(__file__).resolve().parents[2])
"""The directory holding the `tulle` package, for the processes started in namespaces."""


class DemoError(RuntimeError):
    """The demo cannot start or went wrong; the message says why."""


def remove_stale_state(tmp: Path | None = None) -> list[Path]:
    """State directories of demos whose process is gone (a crash, a SIGKILL)."""
    gone = []
    base = tmp or Path(tempfile.gettempdir())
    for d in base.glob(f"{STATE_PREFIX}*"):
        pid = d.name[len(STATE_PREFIX):]
        if not pid.isdigit() or d.is_symlink():
            continue  # (a demo's state is a directory, never a link: not ours, not followed)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
        except PermissionError:
            pass
    return gone


def make_state_dir(path: Path, tries: int = 3) -> None:
    """Create the demo's state directory `path` (0711, ours).  Its name is predictable (the
    pid, so the next start can find a crashed run's): whatever another user put there first
    -- a link, a file, a directory -- is removed without following it, and the directory is
    made afresh; `mkdir` never reuses one (attack review A2, ADR 0060).  A link there used to
    survive `rmtree` and stop the demo with a traceback."""
    for _ in range(tries):
        try:
            path.mkdir(mode=0o711)
            return
        except FileExistsError:
            pass
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(path.lstat().st_mode):
                shutil.rmtree(path)  # (fd-based: links inside are not followed)
            else:
                path.unlink()
    raise DemoError(f"cannot create the state directory {path}: something keeps taking its "
                    f"place (another user?)")


class RuntimeClaim:
    """This demo's hold on a runtime directory (see `claim_runtime_dir`); `close()` lets go."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # (closing the descriptor drops the flock)
            self._fd = -1


def claim_runtime_dir(directory: Path) -> RuntimeClaim:
    """Claim `directory`, where this demo publishes its admin token, for as long as it runs.

    Every demo publishes to the same runtime token file (`/run/tulle/admin-token` for root),
    so two demos on other API ports overwrote each other's token: the first, still building,
    then failed with `unauthorized` (hygiene audit, ADR 0105).  A second demo now refuses at
    once instead.  The claim is an flock on the directory itself: no lock file is left behind,
    and the kernel drops it when the demo dies, even by SIGKILL, so a crash never blocks the
    next start.  The descriptor is not inherited (PEP 446), so no child keeps the claim alive.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DemoError(f"another tulle demo is running and publishes its admin token in "
                        f"{directory}; one demo at a time (stop it first)") from None
    return RuntimeClaim(fd)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Topology:
    """Builds and tears down the whole demo; `close()` is safe to call at any point."""

    def __init__(self, *, api_port: int, stream_port: int, rps: float,
                 stats_interval: float = 1.0, stop: threading.Event | None = None) -> None:
        """`stop`: set by Ctrl-C / SIGTERM; the build gives up at its next wait."""
        self.api_port, self.stream_port, self.rps = api_port, stream_port, rps
        self.stats_interval = stats_interval
        self.stop = stop or threading.Event()
        self.api = f"http://127.0.0.1:{api_port}"
        self.pods = mesh.pods(rps)
        self.state = Path(tempfile.gettempdir()) / f"{STATE_PREFIX}{os.getpid()}"
        self.token_file = runtime_admin_token_file() or self.state / "admin-token"
        self.testbed: Testbed | None = None
        self.ns: dict[str, Namespace] = {}
        self.cp: subprocess.Popen[bytes] | None = None
        self._claim: RuntimeClaim | None = None
        self._logs: list[Any] = []
        self._token_text = ""
        self.progress: Callable[[str], None] = lambda _line: None
        """Told each step of the build as it is done (`tulle demo` prints them)."""
        self._began = time.monotonic()
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "PYTHONPATH": SRC, "LANG": "C.UTF-8", "HOME": "/",
                    "GRPC_DNS_RESOLVER": "native"}
        """What every process in the testbed gets: no proxy variables, no tokens."""

    # -- life cycle --------------------------------------------------------------------------
    def _step(self, what: str) -> None:
        self.progress(f"  {time.monotonic() - self._began:5.1f} s  {what}")

    def start(self) -> None:
        self._began = time.monotonic()
        if runtime_admin_token_file() is not None:  # a file other demos publish to as well
            self.token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._claim = claim_runtime_dir(self.token_file.parent)
        if port_in_use(self.api_port):
            raise DemoError(f"127.0.0.1:{self.api_port} is in use (another control plane?); "
                            "stop it or give --api-port")
        self._preflight()
        stale, dirs = remove_stale(), remove_stale_state()
        if stale or dirs:
            self._step(f"removed what a run that did not exit cleanly left: {len(stale)} "
                       f"namespaces with their processes, {len(dirs)} state directories")
        make_state_dir(self.state)
        self.token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.testbed = tb = Testbed()
        self.ns["cp"] = tb.node(f"{CP_ADDRESS}/24")
        for name, ip in NODES.items():
            self.ns[name] = tb.node(f"{ip}/24")
        for pod in self.pods:
            self.ns[pod.name] = tb.pod(self.ns[pod.node], pod.address)
        self._step(f"network: {len(NODES)} nodes and {len(self.pods)} pods as namespaces, "
                   "a bridge in its own namespace")
        self._start_control_plane()
        self._step("control plane up (SQLite store, stream inside the testbed)")
        docs = self.state / "mesh.yaml"
        docs.write_text(yaml.safe_dump_all(mesh.resources(self.rps), sort_keys=False))
        self.tulle("apply", "-f", str(docs))
        self._step("Services, routes and policies applied")
        for pod in self.pods:
            if pod.agent_ports is None and pod.port is not None:
                self._app(pod)
                self._sidecar(pod)
                self._step(f"{pod.name}: app and sidecar up")
        self._agent([p for p in self.pods if p.agent_ports is not None])
        self._step("node agent up for " + ", ".join(p.name for p in self.pods
                                                     if p.agent_ports is not None))
        for pod in self.pods:
            if pod.port is None:  # the load generator: once everything it calls is up
                self._sidecar(pod)
        for name in CALLS:
            self._wait(f"{name}'s sidecar to know its backends",
                       functools.partial(self._backends_ready, name), f"{name}-proxy")
        self._step("every caller's sidecar knows its backends")
        for pod in self.pods:
            if pod.port is None:
                self._app(pod)
                self._step(f"{pod.name}: traffic started")

    def _preflight(self) -> None:
        """The proxies and apps run under their own uids: they must be able to read this
        Python and the tulle package (a checkout under /root is not readable by them)."""
        for uid in (PROXY_UID, APP_UID):
            res = subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 sys.executable, "-c", "import tulle.demo.apps, grpc"],
                env=self.env, capture_output=True, text=True, timeout=60, check=False)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["?"])[-1]
                raise DemoError(f"uid {uid} cannot run {sys.executable} with the tulle package "
                                f"from {SRC} ({last}); the demo runs proxies and apps under "
                                "their own uids, so put the checkout and its .venv where "
                                "other users can read them")

    def made_anything(self) -> bool:
        """Whether `start()` got as far as making something that `close()` removes."""
        return self.testbed is not None or self.cp is not None or self.state.exists()

    def close(self) -> None:
        if self.testbed is not None:
            self.testbed.close()  # the pods' and nodes' processes, then the namespaces
            self.testbed = None
        if self.cp is not None and self.cp.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.cp.pid, signal.SIGTERM)
            try:
                self.cp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.cp.pid, signal.SIGKILL)
                # Bounded, and no reason to skip the rest of the clean-up (ADR 0105).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.cp.wait(timeout=5)
        for f in self._logs:
            f.close()
        self._logs.clear()
        # The runtime token file, unless another control plane has written its own since.
        with contextlib.suppress(OSError):
            if self._token_text and self.token_file.read_text() == self._token_text:
                self.token_file.unlink()
        shutil.rmtree(self.state, ignore_errors=True)
        if self._claim is not None:  # last: the token file is ours until here
            self._claim.close()
            self._claim = None

    # -- pieces ------------------------------------------------------------------------------
    def _logfile(self, name: str) -> Any:
        fd = os.open(self.state / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        f = os.fdopen(fd, "wb")  # root's only; each process writes through its inherited fd
        self._logs.append(f)
        return f

    def _start_control_plane(self) -> None:
        sock = nsock.listen_in(self.ns["cp"].name, CP_ADDRESS, self.stream_port)
        try:
            # setpriv --pdeathsig: SIGTERM when the demo dies, even by SIGKILL.
            self.cp = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM",
                 sys.executable, "-m", "tulle.cli.main", "control-plane", "run",
                 "--store", f"sqlite:{self.state / 'tulle.db'}",
                 "--api-port", str(self.api_port), "--stream-fd", str(sock.fileno()),
                 "--admin-token-file", str(self.token_file), "--debounce-ms", "50",
                 "--stats-interval", f"{self.stats_interval:g}"],
                pass_fds=(sock.fileno(),), stdout=self._logfile("control-plane"),
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**self.env, "HOME": os.environ.get("HOME", "/")})
        finally:
            sock.close()  # the control plane holds its own copy
        self._wait("the control plane's API", lambda: self._ready(), "control-plane")
        self._token_text = self.token_file.read_text()

    def _ready(self) -> bool:
        if self.cp is not None and self.cp.poll() is not None:
            raise DemoError("the control plane exited:\n" + self.tail("control-plane"))
        try:
            with urllib.request.urlopen(f"{self.api}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tulle(self, *args: str) -> str:
        """`tulle ARGS` against the demo's control plane, from the host's namespace."""
        env = {**self.env, "TULLE_SERVER": self.api, "TULLE_TOKEN_FILE": str(self.token_file)}
        res = subprocess.run([sys.executable, "-m", "tulle.cli.main", *args], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise DemoError(f"tulle {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def _token(self, pod: Pod) -> Path:
        text = self.tulle("token", "issue", "--workload", pod.name, "-n", NAMESPACE)
        f = self.state / f"{pod.name}.token"
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text.strip().splitlines()[0] + "\n")
        os.chown(f, PROXY_UID, PROXY_UID)  # only the proxy's uid reads it
        return f

    def _app(self, pod: Pod) -> None:
        ns = self.ns[pod.name]
        ns.popen([sys.executable, "-m", "tulle.demo.apps", *pod.argv], user=APP_UID,
                 stdout=self._logfile(f"{pod.name}-app"), stderr=subprocess.STDOUT,
                 env=self.env)
        if pod.port is not None:
            self._wait(f"{pod.name}'s app", lambda: self._listening(ns, pod.port or 0),
                       f"{pod.name}-app")

    def _proxy(self, ns: Namespace, args: list[str], log: str) -> None:
        ns.popen([sys.executable, "-m", "tulle.cli.main", "proxy", "run", "--control-plane",
                  f"{CP_ADDRESS}:{self.stream_port}", *args], user=PROXY_UID,
                 stdout=self._logfile(log), stderr=subprocess.STDOUT, env=self.env)

    def _sidecar(self, pod: Pod) -> None:
        ns = self.ns[pod.name]
        ns.run([sys.executable, "-m", "tulle.cli.main", "iptables", "apply", "--no-ipv6",
                "--vip-cidr", mesh.VIP_CIDR], env=self.env)
        self._proxy(ns, ["--workload", pod.name, "-n", NAMESPACE, "--address", pod.address,
                         "--token-file", str(self._token(pod))], f"{pod.name}-proxy")
        ports = [15001, 15053] + ([15006] if pod.port is not None else [])
        self._wait(f"{pod.name}'s sidecar",
                   lambda: all(self._listening(ns, p) for p in ports), f"{pod.name}-proxy")

    def _agent(self, pods: list[Pod]) -> None:
        node = self.ns["node-2"]
        for pod in pods:
            self._app(pod)
        cfg = {"workloads": [
            {"name": p.name, "namespace": NAMESPACE, "address": p.address,
             "serviceAccount": p.service_account, "labels": p.labels,
             "outboundPort": p.agent_ports[0], "tokenFile": str(self._token(p))}
            for p in pods if p.agent_ports is not None]}
        f = self.state / "node-2.yaml"
        f.write_text(yaml.safe_dump(cfg))
        f.chmod(0o644)
        self._proxy(node, ["--node-config", str(f)], "node-2-agent")
        ports = [port for p in pods if p.agent_ports for port in p.agent_ports]
        self._wait("node-2's agent", lambda: all(self._listening(node, p) for p in ports),
                   "node-2-agent")
        node.run([sys.executable, "-m", "tulle.cli.main", "iptables", "node", "apply",
                  *(f"--pod={p.address}={p.agent_ports[0]}:{p.agent_ports[1]}"
                    for p in pods if p.agent_ports)], env=self.env)

    # -- looking -----------------------------------------------------------------------------
    @staticmethod
    def _listening(ns: Namespace, port: int) -> bool:
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False)
        return bool(out.stdout.strip())

    def _wait(self, what: str, ok: Callable[[], bool], log: str, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.stop.is_set():
                raise DemoError(f"interrupted while waiting for {what}")
            if ok():
                return
            time.sleep(0.1)
        raise DemoError(f"{what} did not come up within {limit:.0f} s; its log:\n"
                        + self.tail(log))

    def _backends_ready(self, name: str) -> bool:
        try:
            status, body = nsock.http_get(self.ns[name].name, "127.0.0.1", 15000, "/clusters")
            clusters = {c.get("name"): c for c in json.loads(body)} if status == 200 else {}
        except (OSError, ValueError, AttributeError):
            return False
        return all(any(e.get("healthy") for e in (clusters.get(c) or {}).get("endpoints", []))
                   for c in CALLS[name])

    def tail(self, log: str, chars: int = 3000) -> str:
        try:
            return (self.state / f"{log}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def metrics(self, pod: Pod) -> str:
        """The /metrics of the proxy serving `pod` (its sidecar, or node-2's agent)."""
        ns = self.ns[pod.node if pod.agent_ports else pod.name]
        try:
            status, body = nsock.http_get(ns.name, "127.0.0.1", 15000, "/metrics")
        except OSError:  # a proxy that is gone shows no connections
            return ""
        return body if status == 200 else ""

    def stat(self, kind: str, window: str) -> dict[str, Any]:
        """`GET /api/v1/stat` for the demo's namespace (what `tulle stat -o json` shows)."""
        req = urllib.request.Request(
            f"{self.api}/api/v1/stat?kind={kind}&namespace={NAMESPACE}&window={window}",
            headers={"Authorization": f"Bearer {self.token_file.read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return dict(json.loads(r.read()))
