"""A throw-away network of Linux network namespaces, for end-to-end tests and demos.

    with Testbed() as tb:
        client = tb.node("10.231.0.2/24", "fd00:231::2/64")   # IPv6 optional
        server = tb.node("10.231.0.3/24")
        server.popen([...], user=1001)          # runs inside the namespace, under uid 1001
        client.run(["curl", "http://10.231.0.3:8080/"])
        pod = tb.pod(server, "10.232.0.5", "fd00:232::5")  # a pod behind node `server`

N nodes sit on the bridge; M pods hang off their nodes by veth pairs and are routed like
Kubernetes pods (a default route to their node, the node forwarding, the other nodes routing
the pod's address via its node).

Addresses come from private ranges (10.231.0.0/24, fd00:231::/64 by default) that exist only
inside the testbed's namespaces: nodes have no default route and nothing joins the host.

Every namespace is named `tl-<pid>-<n>` (pid of the process that made it).  Nodes are joined by
veth pairs to a bridge that lives in a namespace of its own, so nothing is created in, routed
to, or filtered in the host's namespace: links are created directly inside their namespaces
(`ip -n NS link add ... peer name ... netns BRIDGE`), never in the host's and moved.

Clean-up: `close()` (also on interpreter exit) stops the processes started here and deletes
the namespaces, which takes their veths with them.  `remove_stale()` deletes namespaces of the
same family whose creating process no longer exists (a crashed or killed run), after stopping
the processes still inside them.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from typing import Any, Final

PREFIX: Final = "tl-"
_NAME: Final = re.compile(r"^tl-(\d+)-(\d+)$")
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def list_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left, each by its own pid.

    One grace period for all of them: each pid used to get its own `grace` in turn, so ten
    processes ignoring SIGTERM held the next start for 30 s (ADR 0105)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        _wait_gone(pid, deadline - time.monotonic())
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, limit: float) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and _pid_alive(pid):
        with contextlib.suppress(ChildProcessError, OSError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.02)


def _netns_pids(name: str) -> list[int]:
    return [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split() if p.isdigit()]


def _delete_namespace(name: str) -> None:
    pids = _netns_pids(name)
    if pids:
        _stop_pids(pids)
    _ip("netns", "delete", name, check=False)


def remove_stale() -> list[str]:
    """Delete `tl-<pid>-<n>` namespaces whose creating process is gone; returns their names.

    The processes left in all of them are stopped together (one SIGTERM to all, then one
    grace period): stopped namespace by namespace, a crashed demo's ten namespaces took ~20 s
    to clear at the next start."""
    stale = []
    for name in list_namespaces():
        m = _NAME.match(name)
        if m is not None and not _pid_alive(int(m.group(1))):
            stale.append(name)
    pids = [pid for name in stale for pid in _netns_pids(name)]
    if pids:
        _stop_pids(pids)
    for name in stale:
        _ip("netns", "delete", name, check=False)
    return stale


def python_for(user: int) -> tuple[str, list[str]]:
    """An interpreter `user` can execute, and what to add to its PYTHONPATH.

    `sys.executable` when every directory on its path, as given and as resolved, lets `user`
    through (a virtualenv's `bin/python` is a symlink: to the system's interpreter when the
    virtualenv was made on it, ADR 0124); otherwise (a virtualenv over an interpreter under a
    private home, such as pyenv's under /root, or a checkout under one) the system's
    interpreter of the same version with this environment's site-packages added, so a proxy
    started under its own uid still finds its dependencies.
    """
    exe = os.path.realpath(sys.executable)
    if _reachable(exe, user) and _reachable(sys.executable, user):
        return sys.executable, []
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(system):
        return sys.executable, []  # nothing better: the caller's start fails and says why
    paths = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    return system, [p for i, p in enumerate(paths) if p not in paths[:i]]


def _reachable(path: str, user: int) -> bool:
    """Whether `user` (not root, no groups) may traverse to and execute `path`."""
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        try:
            st = os.stat("/".join(parts[:i]) or "/")
        except OSError:
            return False
        bit = stat.S_IXUSR if st.st_uid == user else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def missing_requirements() -> str | None:
    """Why a testbed cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


class Namespace:
    """One network namespace of a testbed."""

    def __init__(self, testbed: Testbed, name: str) -> None:
        self.testbed = testbed
        self.name = name
        self.address: str = ""
        """The node's IPv4 address on the bridge, without the prefix length."""

        self.address6: str = ""
        """The node's IPv6 address on the bridge, when it has one."""
        self.node: Namespace | None = None
        """For a pod: the node namespace its `eth0` is plugged into."""

    def argv(self, args: Sequence[str], user: int | None = None) -> list[str]:
        """`args` inside the namespace; under `user` (uid = gid, no groups) when given."""
        if user is not None:
            args = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *args]
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], check: bool = True, timeout: float = 60,
            user: int | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion."""
        kw.setdefault("capture_output", True)
        return subprocess.run(self.argv(args, user), check=check, text=True, timeout=timeout,
                              **kw)

    def popen(self, args: Sequence[str], user: int | None = None,
              **kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running command inside the namespace; the testbed stops it on close."""
        proc = subprocess.Popen(self.argv(args, user), start_new_session=True, **kw)
        self.testbed.processes.append(proc)
        return proc

    def ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)


class Testbed:
    """Namespaces joined by one bridge; everything removed on `close()`."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, subnet: str = "10.231.0.0/24", subnet6: str = "fd00:231::/64",
                 pod_subnet: str = "10.232.0.0/16", pod_subnet6: str = "fd00:232::/64") -> None:
        why = missing_requirements()
        if why is not None:
            raise RuntimeError(why)
        self.prefix = f"{PREFIX}{os.getpid()}-"
        self.subnet = ipaddress.ip_network(subnet)
        self.subnet6 = ipaddress.ip_network(subnet6)
        self.pod_subnet = ipaddress.ip_network(pod_subnet)
        self.pod_subnet6 = ipaddress.ip_network(pod_subnet6)
        for net in (self.subnet, self.subnet6, self.pod_subnet, self.pod_subnet6):
            if not net.is_private:
                raise ValueError(f"{net} is not a private range")
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._bridge: Namespace | None = None
        self._ports = itertools.count()
        self._nodes: list[Namespace] = []
        self._pods: list[Namespace] = []
        self._closed = False
        remove_stale()
        atexit.register(self.close)

    def namespace(self) -> Namespace:
        """A new, empty namespace with loopback up."""
        name = f"{self.prefix}{next(_counter)}"
        _ip("netns", "add", name)
        ns = Namespace(self, name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    @property
    def bridge(self) -> Namespace:
        if self._bridge is None:
            br = self._bridge = self.namespace()
            br.ip("link", "add", "br0", "type", "bridge")
            br.ip("link", "set", "br0", "up")
        return self._bridge

    def node(self, address: str, address6: str | None = None) -> Namespace:
        """A namespace with `eth0` on the bridge at `address` (CIDR, inside the subnet), and at
        `address6` too when given (inside `subnet6`)."""
        iface = ipaddress.ip_interface(address)
        if iface.ip not in self.subnet:
            raise ValueError(f"{address} is outside the testbed subnet {self.subnet}")
        iface6 = ipaddress.ip_interface(address6) if address6 is not None else None
        if iface6 is not None and iface6.ip not in self.subnet6:
            raise ValueError(f"{address6} is outside the testbed subnet {self.subnet6}")
        bridge = self.bridge
        ns = self.namespace()
        port = f"v{next(self._ports)}"
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", bridge.name)
        bridge.ip("link", "set", port, "master", "br0", "up")
        ns.ip("addr", "add", address, "dev", "eth0")
        if iface6 is not None:
            # nodad: usable at once, no duplicate-address detection to wait for.
            ns.ip("-6", "addr", "add", str(iface6), "dev", "eth0", "nodad")
            ns.address6 = str(iface6.ip)
        ns.ip("link", "set", "eth0", "up")
        ns.address = str(iface.ip)
        self._nodes.append(ns)
        for pod in self._pods:
            self._route_to_pod(ns, pod)
        return ns

    def pod(self, node: Namespace, address: str, address6: str | None = None) -> Namespace:
        """A pod namespace plugged into `node` by a veth, routed like a Kubernetes pod.

        The pod's `eth0` holds `address` (/32, inside `pod_subnet`) and `address6` (/128);
        its default route goes to the node's end of the veth (169.254.1.1 and fe80::1, as
        Calico does), the node forwards, and every other node routes the pod's address via
        this node's bridge address.  The node has no default route: nothing leaves the testbed.
        """
        ip = ipaddress.ip_interface(address).ip
        if ip not in self.pod_subnet:
            raise ValueError(f"{address} is outside the testbed pod subnet {self.pod_subnet}")
        ip6 = ipaddress.ip_interface(address6).ip if address6 is not None else None
        if ip6 is not None and ip6 not in self.pod_subnet6:
            raise ValueError(f"{address6} is outside the testbed pod subnet {self.pod_subnet6}")
        if ip6 is not None and not node.address6:
            raise ValueError(f"{address6}: node {node.name} has no IPv6 address")
        if node not in self._nodes:
            raise ValueError(f"{node.name} is not a node of this testbed")
        pod = self.namespace()
        pod.node = node
        port = f"p{next(self._ports)}"
        pod.ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", node.name)
        node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        node.ip("addr", "add", "169.254.1.1/32", "dev", port)
        node.ip("-6", "addr", "add", "fe80::1/64", "dev", port, "nodad")
        node.ip("link", "set", port, "up")
        pod.ip("addr", "add", f"{ip}/32", "dev", "eth0")
        if ip6 is not None:
            pod.ip("-6", "addr", "add", f"{ip6}/128", "dev", "eth0", "nodad")
            pod.address6 = str(ip6)
        pod.ip("link", "set", "eth0", "up")
        pod.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        pod.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        if ip6 is not None:
            pod.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        node.ip("route", "add", f"{ip}/32", "dev", port)
        if ip6 is not None:
            node.ip("-6", "route", "add", f"{ip6}/128", "dev", port)
        pod.address = str(ip)
        self._pods.append(pod)
        for other in self._nodes:
            self._route_to_pod(other, pod)
        return pod

    @staticmethod
    def _route_to_pod(node: Namespace, pod: Namespace) -> None:
        """On another node, the pod's addresses via its node's bridge addresses."""
        home = pod.node
        if home is None or home is node:
            return
        node.ip("route", "add", f"{pod.address}/32", "via", home.address)
        if pod.address6 and node.address6:
            node.ip("-6", "route", "add", f"{pod.address6}/128", "via", home.address6)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # one grace period for all of them (ADR 0105)
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                # Bounded, and never a reason to keep the namespaces: one still there after
                # SIGKILL (a task stuck in the kernel) used to abort the clean-up here, leaving
                # every namespace behind.  Deleting a namespace only unmounts its name; the
                # kernel frees it when its last process is gone.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for ns in reversed(self.namespaces):
            _delete_namespace(ns.name)
        self.namespaces.clear()
        self._nodes.clear()
        self._pods.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
