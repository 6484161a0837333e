"""Agent mode and IPv6, end to end in namespaces (ADR 0050): a dual-stack pod behind a node
whose agent steering is IPv4 cannot get around the agent over IPv6, either way.

    [server 10.231.0.3 / fd00:231::3]   TCP :8080 and UDP :5353 on [::]
    [node   10.231.0.5 / fd00:231::5]   tulle iptables node apply --pod 10.232.0.2=15001,
                                        TCP :7000 on [::]
       └── [pod 10.232.0.2 / fd00:232::2]   TCP :9000 on [::]

Before `apply` the pod and the server reach each other over IPv6 (so the test can fail);
after it the pod's IPv6 TCP is reset and its UDP answered "port unreachable" at once, the
server's TCP to the pod is reset, the node's own IPv6 is untouched; `apply` again changes
nothing; `clean` restores the IPv6 paths and leaves no rule of ours.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from tests.support.netns import require_tools, testbed  # noqa: F401

from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
TULLE = [sys.executable, "-m", "tulle.cli.main"]

SERVE = r'''
import asyncio, sys

async def tcp(r, w):
    w.write(sys.argv[1].encode() + b"\n")
    await w.drain()
    w.close()

class Udp(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr): self.t.sendto(b"udp " + data, addr)

async def main():
    loop = asyncio.get_running_loop()
    await asyncio.start_server(tcp, "::", int(sys.argv[2]))
    await loop.create_datagram_endpoint(Udp, local_addr=("::", 5353))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

CALL = r'''
import json, socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        with socket.create_connection((host, port), timeout=5) as s:
            out = s.makefile("rb").readline().decode().strip()
    else:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.connect((host, port))
            s.send(b"ping")
            out = s.recv(100).decode()
except ConnectionRefusedError:
    out = "refused"
except (ConnectionResetError, socket.timeout, OSError) as exc:
    out = type(exc).__name__
print(json.dumps(out))
'''


def call(ns: Namespace, workdir: Path, proto: str, host: str, port: int) -> str:
    out = ns.run([sys.executable, str(workdir / "call.py"), proto, host, str(port)], timeout=30)
    return str(json.loads(out.stdout))


def serve(ns: Namespace, workdir: Path, name: str, port: int) -> None:
    import subprocess

    proc = ns.popen([sys.executable, str(workdir / "serve.py"), name, str(port)],
                    stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":
        proc.wait(timeout=5)
        pytest.fail(f"{name}'s server exited with {proc.returncode}")


def filter6(ns: Namespace) -> str:
    return "".join(line for line in ns.run(["ip6tables-save", "-t", "filter"]).stdout
                   .splitlines(keepends=True) if not line.startswith("#"))


def test_a_dual_stack_pod_cannot_get_around_its_agent_over_ipv6(
        testbed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    require_tools("iptables", "ip6tables-save", "ip6tables-restore")
    workdir = tmp_path
    (workdir / "serve.py").write_text(SERVE)
    (workdir / "call.py").write_text(CALL)
    server = testbed.node("10.231.0.3/24", "fd00:231::3/64")
    node = testbed.node("10.231.0.5/24", "fd00:231::5/64")
    pod = testbed.pod(node, "10.232.0.2", "fd00:232::2")
    serve(server, workdir, "server", 8080)
    serve(pod, workdir, "pod", 9000)
    serve(node, workdir, "node", 7000)
    # Without the node's rules, IPv6 goes around any agent, both ways.
    assert call(pod, workdir, "tcp", "fd00:231::3", 8080) == "server"
    assert call(pod, workdir, "tcp", "fd00:231::5", 7000) == "node"
    assert call(pod, workdir, "udp", "fd00:231::3", 5353) == "udp ping"
    assert call(server, workdir, "tcp", "fd00:232::2", 9000) == "pod"

    node.run([*TULLE, "iptables", "node", "apply", "--pod", "10.232.0.2=15001"], env=ENV)
    rules = filter6(node)
    assert "-A FORWARD -j TULLE_NODE6" in rules and "-A INPUT -j TULLE_NODE6_IN" in rules
    assert call(pod, workdir, "tcp", "fd00:231::3", 8080) == "refused"  # a reset, at once
    assert call(pod, workdir, "udp", "fd00:231::3", 5353) == "refused"  # port unreachable
    assert call(pod, workdir, "tcp", "fd00:231::5", 7000) == "refused"  # the node itself
    assert call(server, workdir, "tcp", "fd00:232::2", 9000) == "refused"
    assert call(node, workdir, "tcp", "fd00:231::3", 8080) == "server"  # the node's own: free
    node.run([*TULLE, "iptables", "node", "apply", "--pod", "10.232.0.2=15001"], env=ENV)
    assert filter6(node) == rules

    node.run([*TULLE, "iptables", "node", "clean"], env=ENV)
    assert "TULLE" not in filter6(node)
    assert call(pod, workdir, "tcp", "fd00:231::3", 8080) == "server"
    assert call(server, workdir, "tcp", "fd00:232::2", 9000) == "pod"


def test_no_ipv6_never_leaves_a_served_pods_ipv6_around_the_agent(
        testbed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    """ADR 0114 (left open by ADR 0111): `node apply --no-ipv6` installed no IPv6 rule, so a
    dual-stack pod reached the server, and was reached, over IPv6 around the agent (plaintext,
    no identity, no policy).  Agent mode steers IPv4 only: the option no longer opens the
    family; the served pods' IPv6 is refused wherever the node has IPv6."""
    require_tools("iptables", "ip6tables-save", "ip6tables-restore")
    (tmp_path / "serve.py").write_text(SERVE)
    (tmp_path / "call.py").write_text(CALL)
    server = testbed.node("10.231.0.3/24", "fd00:231::3/64")
    node = testbed.node("10.231.0.5/24", "fd00:231::5/64")
    pod = testbed.pod(node, "10.232.0.2", "fd00:232::2")
    serve(server, tmp_path, "server", 8080)
    serve(pod, tmp_path, "pod", 9000)
    assert call(pod, tmp_path, "tcp", "fd00:231::3", 8080) == "server"  # open before
    out = node.run([*TULLE, "iptables", "node", "apply", "--no-ipv6", "--pod",
                    "10.232.0.2=15001"], env=ENV).stdout
    assert call(pod, tmp_path, "tcp", "fd00:231::3", 8080) == "refused"  # was "server"
    assert "--no-ipv6: IPv6 is on here, so the served pods' IPv6 is refused anyway" in out, out
    assert call(pod, tmp_path, "udp", "fd00:231::3", 5353) == "refused"
    assert call(server, tmp_path, "tcp", "fd00:232::2", 9000) == "refused"
    node.run([*TULLE, "iptables", "node", "clean"], env=ENV)
    assert "TULLE" not in filter6(node)
