"""The full-path benchmark's network (issue 11): three client pods calling three server pods
across two nodes, one pair with no mesh, one through two sidecars, one through two node agents.

    [cp 10.231.0.10]  tulle control-plane run (memory store), CPU 1
    [node-c 10.231.0.2]  agent for c-agent             [node-s 10.231.0.3]  agent for s-agent
      ├─ [c-none  10.232.1.1] loadgen ──────────────────────▶ [s-none  10.232.2.1] nginx :8080
      ├─ [c-side  10.232.1.2] loadgen ▶ sidecar ══mTLS══▶ sidecar ▶ [s-side 10.232.2.2] nginx
      ├─ [c-agent 10.232.1.3] loadgen ▶ node-c agent ══mTLS══▶ node-s agent ▶ [s-agent ...] nginx
      └─ [c-hap   10.232.1.4] loadgen ▶ HAProxy ══mTLS══▶ HAProxy ▶ [s-hap 10.232.2.4] nginx

Every pair crosses the same links (pod veth, node, bridge, node, pod veth): the only
difference is the mesh.  The sidecars are `tulle proxy run --control-plane` inside their pods
(uid 1337) behind `tulle iptables apply`; the agents are `tulle proxy run --node-config` in
the node namespaces behind `tulle iptables node apply` (ADR 0047).  Mesh mTLS is STRICT; the
meshed clients call their Service's virtual IP (port 80 -> 8080), routed by the client side's
outbound listener; the unmeshed client calls its server pod's address (there is no kube-proxy
to give it a VIP).  The origins are the main benchmark's nginx (a static 1 KiB file, one
worker, keep-alive).

The fourth pair is the peer every issue-11 figure is read against: two HAProxy processes in
the places of the sidecars, behind the same `tulle iptables apply` rules (uid 1337 exempt),
the client pod's re-encrypting to the server pod's address with a client certificate and
`verify required`, TLS 1.3, the server pod's terminating with `verify required`
(`bench.mtls_peers.haproxy_tls_configs`, the loopback peer's configs with pod addresses).
Its client calls the server pod's address, like the unmeshed one: HAProxy has no mesh
routes, and the redirect is the same for any destination.  It does less than a sidecar (no
SPIFFE ID check, no routes, no telemetry), as on loopback.

Pinning as in the main benchmark: every proxy on CPU 0, the origins, the load generators and
the control plane on CPU 1.  Everything lives in namespaces of a `tulle.net.netns.Testbed`
and in a temp dir; `close()` (and the testbed's own atexit hook) stops and removes it all.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.mtls_peers import certs, haproxy_tls_configs
from bench.peers import BODY_PATH, BODY_SIZE, LOAD_CPU, PROXY_CPU, origin_config
from bench.procs import tree
from tulle.net.netns import Namespace, Testbed, python_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
TULLE = [sys.executable, "-m", "tulle.cli.main"]
_PROXY_PY, _PROXY_PATH = python_for(1337)
PROXY_TULLE = [_PROXY_PY, "-m", "tulle.cli.main"]
"""What runs the proxies under their own uid (python_for: a pyenv interpreter under /root is
out of that uid's reach)."""
PROXY_ENV = {**ENV, "PYTHONPATH": ":".join([ENV["PYTHONPATH"], *_PROXY_PATH])}
PROXY_UID = 1337
STREAM, API = 15680, 15681
APP_PORT = 8080
VIP_CIDR = "240.240.0.0/16"
AGENT_OUT = {"c-agent": 15001, "s-agent": 15002}
AGENT_IN = 15106
MODES = ("none", "sidecar", "agent", "haproxy")
MESH_MODES = ("sidecar", "agent")
"""The paths of Tulle's own proxies: the ones issue 11's goal is judged on."""
HAPROXY_OUT, HAPROXY_IN = 15001, 15006


@dataclass
class BenchPath:
    """One client -> server path: where the load generator runs and what it calls."""

    mode: str
    client: Namespace
    host: str = ""
    port: int = APP_PORT
    proxy_pids: list[int] = field(default_factory=list)
    """Both proxies on the path (their process trees), for CPU per request."""


def _resources() -> list[dict[str, Any]]:
    def workload(name: str, address: str, ports: list[dict[str, Any]],
                 **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                "metadata": {"name": name, "namespace": "bench", "labels": {"app": name}},
                "spec": {"address": address, "interception": "transparent", "ports": ports,
                         "serviceAccount": name, **spec}}

    def service(name: str, target: str) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"selector": {"app": target}, "ports": [
                    {"port": 80, "targetPort": APP_PORT, "appProtocol": "http"}]}}

    app = [{"port": APP_PORT}]
    return [
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
         "spec": {"mtls": {"mode": "STRICT"}}},
        workload("c-side", ADDR["c-side"], []),
        workload("s-side", ADDR["s-side"], app),
        workload("c-agent", ADDR["c-agent"], [], interception="agent",
                 outboundPort=AGENT_OUT["c-agent"]),
        workload("s-agent", ADDR["s-agent"], app, interception="agent",
                 outboundPort=AGENT_OUT["s-agent"], inboundPort=AGENT_IN),
        service("svc-side", "s-side"), service("svc-agent", "s-agent"),
    ]


ADDR = {"c-none": "10.232.1.1", "c-side": "10.232.1.2", "c-agent": "10.232.1.3",
        "c-hap": "10.232.1.4", "s-none": "10.232.2.1", "s-side": "10.232.2.2",
        "s-agent": "10.232.2.3", "s-hap": "10.232.2.4"}


def _wait(what: str, ok: Callable[[], bool], log: Path | None = None,
          limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} never happened" + (f":\n{tail}" if tail else ""))


def _listening(ns: Namespace, port: int) -> bool:
    return bool(ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout.strip())


class Network:
    """The testbed, the control plane, the origins and the proxies; `close()` undoes it all."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tulle-bench-netns-"))
        self.tmp.chmod(0o755)  # the proxies' uid reads their token files here
        self.tb = Testbed()
        self.ns: dict[str, Namespace] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paths: dict[str, BenchPath] = {}

    # -- processes -------------------------------------------------------------------------

    def _start(self, name: str, ns: Namespace, argv: list[str], cpu: int,
               user: int | None = None) -> Path:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            self.procs[name] = ns.popen(["taskset", "-c", str(cpu), *argv], user=user,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        env=ENV if user is None else PROXY_ENV)
        return log

    def proxy_pids(self, name: str) -> list[int]:
        return tree(self.procs[name].pid)

    def cli(self, *args: str) -> str:
        env = {**ENV, "TULLE_TOKEN_FILE": str(self.tmp / "admin-token")}
        return self.ns["cp"].run([*TULLE, *args], env=env, timeout=60).stdout

    def _token(self, name: str) -> Path:
        f = self.tmp / f"{name}.token"
        f.write_text(self.cli("token", "issue", "--workload", name, "-n", "bench")
                     .strip().splitlines()[0])
        f.chmod(0o644)
        return f

    # -- build -----------------------------------------------------------------------------

    def build(self) -> dict[str, BenchPath]:
        tb = self.tb
        self.ns["cp"] = cp = tb.node("10.231.0.10/24")
        self.ns["node-c"] = node_c = tb.node("10.231.0.2/24")
        self.ns["node-s"] = node_s = tb.node("10.231.0.3/24")
        for name, ip in ADDR.items():
            self.ns[name] = tb.pod(node_c if name.startswith("c-") else node_s, ip)
        for name in ("s-none", "s-side", "s-agent", "s-hap"):
            self._origin(name)
        (self.tmp / "mesh.yaml").write_text(yaml.safe_dump_all(_resources()))
        log = self._start("cp", cp, [*TULLE, "control-plane", "run", "--store", "memory",
                                     "--stream-address", "0.0.0.0", "--stream-port",
                                     str(STREAM), "--api-port", str(API), "--debounce-ms", "20",
                                     "--admin-token-file", str(self.tmp / "admin-token")],
                          LOAD_CPU)
        _wait("the control plane's API", lambda: _listening(cp, API), log)
        self.cli("apply", "-f", str(self.tmp / "mesh.yaml"))
        self._sidecar("s-side", inbound=True)
        self._sidecar("c-side", inbound=False)
        self._agent("node-c", "c-agent", f"--pod={ADDR['c-agent']}={AGENT_OUT['c-agent']}")
        self._agent("node-s", "s-agent",
                    f"--pod={ADDR['s-agent']}={AGENT_OUT['s-agent']}:{AGENT_IN}",
                    inbound=True)
        self._haproxy()
        self.paths = {
            "none": BenchPath("none", self.ns["c-none"], ADDR["s-none"], APP_PORT),
            "sidecar": BenchPath("sidecar", self.ns["c-side"], self._vip("svc-side", "c-side"), 80,
                             self.proxy_pids("c-side-proxy") + self.proxy_pids("s-side-proxy")),
            "agent": BenchPath("agent", self.ns["c-agent"], self._vip("svc-agent", "node-c"), 80,
                           self.proxy_pids("node-c-agent") + self.proxy_pids("node-s-agent")),
            "haproxy": BenchPath("haproxy", self.ns["c-hap"], ADDR["s-hap"], APP_PORT,
                                 self.proxy_pids("c-hap-proxy") + self.proxy_pids("s-hap-proxy")),
        }
        return self.paths

    def _origin(self, name: str) -> None:
        d = self.tmp / name
        d.mkdir()
        conf = d / "origin.conf"
        conf.write_text(origin_config(d, APP_PORT, host="0.0.0.0"))
        log = self._start(f"{name}-origin", self.ns[name], ["nginx", "-p", str(d), "-c",
                                                              str(conf)], LOAD_CPU)
        _wait(f"{name}'s origin", lambda: _listening(self.ns[name], APP_PORT), log)

    def _sidecar(self, name: str, inbound: bool) -> None:
        ns = self.ns[name]
        ns.run([*TULLE, "iptables", "apply", "--no-ipv6", "--no-redirect-dns",
                "--vip-cidr", VIP_CIDR], env=ENV)
        log = self._start(f"{name}-proxy", ns,
                          [*PROXY_TULLE, "proxy", "run", "--control-plane",
                           f"{self.ns['cp'].address}:{STREAM}", "--workload", name, "-n",
                           "bench", "--address", ADDR[name], "--dns-port", "0",
                           "--token-file", str(self._token(name))], PROXY_CPU, user=PROXY_UID)
        _wait(f"{name}'s sidecar", lambda: _listening(ns, 15006 if inbound else 15001), log)

    def _haproxy(self) -> None:
        """The peer pair: HAProxy as both sidecars, behind the sidecars' own interception."""
        files = certs().write(self.tmp)
        hop1, hop2 = haproxy_tls_configs(self.tmp, files, HAPROXY_OUT, HAPROXY_IN, APP_PORT,
                                         bind="0.0.0.0", hop2_dial=f"{ADDR['s-hap']}:{APP_PORT}",
                                         uid=PROXY_UID)
        for pod, text, port in (("s-hap", hop2, HAPROXY_IN), ("c-hap", hop1, HAPROXY_OUT)):
            ns = self.ns[pod]
            ns.run([*TULLE, "iptables", "apply", "--no-ipv6", "--no-redirect-dns"], env=ENV)
            conf = self.tmp / f"{pod}-haproxy.cfg"
            conf.write_text(text)
            # Started as root to read the keys (0600), then HAProxy itself drops to PROXY_UID.
            log = self._start(f"{pod}-proxy", ns, ["haproxy", "-db", "-f", str(conf)], PROXY_CPU)
            _wait(f"{pod}'s HAProxy", functools.partial(_listening, ns, port), log)

    def _agent(self, node: str, pod: str, steer: str, inbound: bool = False) -> None:
        ns = self.ns[node]
        cfg = {"workloads": [{"name": pod, "namespace": "bench", "address": ADDR[pod],
                              "serviceAccount": pod, "outboundPort": AGENT_OUT[pod],
                              "tokenFile": str(self._token(pod))}]}
        f = self.tmp / f"{node}.yaml"
        f.write_text(yaml.safe_dump(cfg))
        log = self._start(f"{node}-agent", ns,
                          [*PROXY_TULLE, "proxy", "run", "--control-plane",
                           f"{self.ns['cp'].address}:{STREAM}", "--node-config", str(f),
                           "--dns-port", "0"], PROXY_CPU, user=PROXY_UID)
        port = AGENT_IN if inbound else AGENT_OUT[pod]
        _wait(f"{node}'s agent", lambda: _listening(ns, port), log)
        ns.run([*TULLE, "iptables", "node", "apply", steer], env=ENV)

    def _vip(self, service: str, proxy: str) -> str:
        """The Service's virtual IP, once it is in the client side's outbound listener."""
        got: list[str] = []

        def ready() -> bool:
            out = json.loads(self.cli("get", "service", service, "-n", "bench", "-o", "json"))
            ip = (out.get("status") or {}).get("virtualIP")
            dump = self.ns[proxy].run(["curl", "-sS", "--max-time", "5",
                                       "http://127.0.0.1:15000/config_dump"],
                                      check=False).stdout
            got[:] = [ip] if ip else []
            return bool(ip) and f'"{ip}"' in dump

        _wait(f"{service}'s virtual IP at {proxy}", ready)
        return got[0]

    def check(self, path: BenchPath) -> None:
        """One request through the path: the origin's 1 KiB, or an error naming the path."""
        out = path.client.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w",
                               "%{http_code} %{size_download}",
                               f"http://{path.host}:{path.port}{BODY_PATH}"], check=False)
        if out.stdout.strip() != f"200 {BODY_SIZE}":
            logs = {n: (self.tmp / f"{n}.log").read_text(errors="replace")[-1500:]
                    for n in self.procs if n.endswith(("proxy", "agent"))}
            raise RuntimeError(f"{path.mode}: {out.stdout!r} {out.stderr.strip()!r}\n{logs}")

    def close(self) -> None:
        self.tb.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
