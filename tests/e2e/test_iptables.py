"""`tulle iptables apply|clean` in real pod namespaces: what is redirected, what is not, and
that `clean` leaves the tables exactly as they were.

    [pod A 10.231.0.2, fd00:231::2]                         [pod B 10.231.0.3, fd00:231::3]
      recorder (uid 1337): :15001 outbound, :15006 inbound,    :8080 and :7777 TCP servers,
        :15053 DNS (UDP + TCP); the outbound one dials the      :53 UDP "resolver"
        original destination itself, as a proxy would
      app :9091 (an excluded inbound port)

The recorder answers each connection with a JSON line saying which port it arrived on and its
original destination (SO_ORIGINAL_DST), so a test sees exactly where the kernel sent it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.netns import require_tools, testbed  # noqa: F401
from tests.support.pods import as_user, as_user_env

from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns

PYTHON = sys.executable
TULLE = [PYTHON, "-m", "tulle.cli.main"]
PROXY_UID = 1337

RECORDER = r'''
import asyncio, json
from tulle.net.origdst import original_destination

async def outbound(r, w):
    orig = original_destination(w.get_extra_info("socket"))
    upstream = ""
    if orig is not None:
        try:  # as a proxy would: this process's own connection must not be redirected
            ur, uw = await asyncio.wait_for(asyncio.open_connection(*orig), 3)
            upstream = (await asyncio.wait_for(ur.readline(), 3)).decode()
            uw.close()
        except Exception as exc:
            upstream = f"error {exc!r}"
    w.write(json.dumps({"via": "outbound", "orig": orig, "upstream": upstream}).encode() + b"\n")
    await w.drain()
    w.close()

async def inbound(r, w):
    orig = original_destination(w.get_extra_info("socket"))
    w.write(json.dumps({"via": "inbound", "orig": orig}).encode() + b"\n")
    await w.drain()
    w.close()

async def dns_tcp(r, w):
    w.write(json.dumps({"via": "dns-tcp"}).encode() + b"\n")
    await w.drain()
    w.close()

class DnsUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        self.transport.sendto(b"recorder:" + data, addr)

async def main():
    loop = asyncio.get_running_loop()
    servers = [await asyncio.start_server(outbound, None, 15001),
               await asyncio.start_server(inbound, None, 15006),
               await asyncio.start_server(dns_tcp, None, 15053)]
    await loop.create_datagram_endpoint(DnsUdp, local_addr=("::", 15053))  # dual stack
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

SERVER = r'''
import asyncio, sys

def line(port):
    async def handle(r, w):
        w.write(b"%s %d\n" % (sys.argv[1].encode(), port))
        await w.drain()
        w.close()
    return handle

class Resolver(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        self.transport.sendto(b"resolver:" + data, addr)

async def main():
    ports = [int(p) for p in sys.argv[2:]]
    servers = [await asyncio.start_server(line(p), None, p) for p in ports]
    await asyncio.get_running_loop().create_datagram_endpoint(
        Resolver, local_addr=("0.0.0.0", 53))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

CLIENT = r'''
import socket, sys
what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if what == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"query", (host, port))
    print(s.recv(512).decode())
else:
    with socket.create_connection((host, port), timeout=5) as s:
        print(s.makefile("rb").readline().decode().strip())
'''


def start(ns: Namespace, code: str, *args: str, user: int | None = None) -> None:
    argv = ["-c", code, *args]
    proc = (ns.popen([PYTHON, *argv], stdout=subprocess.PIPE) if user is None else
            ns.popen(as_user(user, argv), stdout=subprocess.PIPE, env=as_user_env(user)))
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":  # EOF when it failed: bounded, no polling
        proc.wait(timeout=5)
        pytest.fail(f"{code[:40]!r} exited with {proc.returncode} in {ns.name}")


def call(ns: Namespace, what: str, host: str, port: int, user: int | None = None) -> str:
    argv = ["-c", CLIENT, what, host, str(port)]
    if user is None:
        return ns.run([PYTHON, *argv], timeout=30).stdout.strip()
    return ns.run(as_user(user, argv), timeout=30, env=as_user_env(user)).stdout.strip()


def tulle(ns: Namespace, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return ns.run([*TULLE, "iptables", *args], check=check)


def tables(ns: Namespace) -> str:
    """Both families' tables, without the comment lines (timestamps) and packet counters."""
    out = ns.run(["iptables-save"]).stdout + ns.run(["ip6tables-save"]).stdout
    lines = [re.sub(r"\[\d+:\d+\]", "[]", line) for line in out.splitlines()
             if not line.startswith("#")]
    return "\n".join(lines)


@pytest.fixture
def pods(testbed: Testbed) -> Iterator[dict[str, Any]]:  # noqa: F811
    require_tools("iptables-save", "ip6tables-save", "setpriv")
    a = testbed.node("10.231.0.2/24", "fd00:231::2/64")
    b = testbed.node("10.231.0.3/24", "fd00:231::3/64")
    start(b, SERVER, "server", "8080", "7777")
    start(a, SERVER, "app", "9091")
    start(a, RECORDER, user=PROXY_UID)
    yield {"a": a, "b": b}


def test_outbound_tcp_goes_to_15001_and_the_proxy_uid_is_not_looped(pods: dict[str, Any]) -> None:
    a = pods["a"]
    tulle(a, "apply")
    got = json.loads(call(a, "tcp", "10.231.0.3", 8080))
    assert got["via"] == "outbound"
    assert got["orig"] == ["10.231.0.3", 8080]
    # The recorder (uid 1337) dialled the original destination and reached the server itself.
    assert got["upstream"] == "server 8080\n"
    # Loopback stays local (the app's own 9091 answers), and the proxy's uid is never redirected.
    assert call(a, "tcp", "127.0.0.1", 9091) == "app 9091"
    assert call(a, "tcp", "10.231.0.3", 8080, user=PROXY_UID) == "server 8080"


def test_ipv6_outbound_and_inbound_are_redirected(pods: dict[str, Any]) -> None:
    a, b = pods["a"], pods["b"]
    tulle(a, "apply")
    got = json.loads(call(a, "tcp", "fd00:231::3", 8080))
    assert got["via"] == "outbound" and got["orig"] == ["fd00:231::3", 8080]
    assert got["upstream"] == "server 8080\n"
    inbound = json.loads(call(b, "tcp", "fd00:231::2", 9090))
    assert inbound == {"via": "inbound", "orig": ["fd00:231::2", 9090]}


def test_inbound_goes_to_15006_except_excluded_ports(pods: dict[str, Any]) -> None:
    a, b = pods["a"], pods["b"]
    tulle(a, "apply", "--exclude-inbound-ports", "9091")
    assert json.loads(call(b, "tcp", "10.231.0.2", 9090)) == {
        "via": "inbound", "orig": ["10.231.0.2", 9090]}
    assert json.loads(call(b, "tcp", "10.231.0.2", 9092))["via"] == "inbound"
    assert call(b, "tcp", "10.231.0.2", 9091) == "app 9091"  # excluded: the app itself


def test_dns_udp_and_tcp_go_to_15053_but_not_for_the_proxy(pods: dict[str, Any]) -> None:
    a = pods["a"]
    tulle(a, "apply")
    assert call(a, "udp", "10.231.0.3", 53) == "recorder:query"
    assert call(a, "udp", "fd00:231::3", 53) == "recorder:query"
    assert json.loads(call(a, "tcp", "10.231.0.3", 53)) == {"via": "dns-tcp"}
    # The DNS proxy's own upstream queries leave the pod unchanged.
    assert call(a, "udp", "10.231.0.3", 53, user=PROXY_UID) == "resolver:query"
    # Without DNS redirection the pod's resolver is asked directly.
    tulle(a, "apply", "--no-redirect-dns")
    assert call(a, "udp", "10.231.0.3", 53) == "resolver:query"


def test_excluded_ports_and_cidrs_are_not_redirected(pods: dict[str, Any]) -> None:
    a = pods["a"]
    tulle(a, "apply", "--exclude-outbound-ports", "7777")
    assert call(a, "tcp", "10.231.0.3", 7777) == "server 7777"
    assert json.loads(call(a, "tcp", "10.231.0.3", 8080))["via"] == "outbound"
    # Applying other options replaces the first set: 7777 is redirected again.
    tulle(a, "apply", "--exclude-outbound-cidrs", "fd00:231::3/128")
    assert json.loads(call(a, "tcp", "10.231.0.3", 7777))["via"] == "outbound"
    assert call(a, "tcp", "fd00:231::3", 8080) == "server 8080"
    tulle(a, "apply", "--exclude-outbound-cidrs", "10.231.0.3/32")
    assert call(a, "tcp", "10.231.0.3", 8080) == "server 8080"
    assert json.loads(call(a, "tcp", "fd00:231::3", 8080))["via"] == "outbound"
    # An explicit include list: only those destinations are redirected.
    tulle(a, "apply", "--outbound-cidrs", "10.231.0.0/24")
    assert json.loads(call(a, "tcp", "10.231.0.3", 8080))["via"] == "outbound"
    assert call(a, "tcp", "fd00:231::3", 8080) == "server 8080"


def test_apply_is_idempotent_and_clean_restores_the_tables_exactly(pods: dict[str, Any]) -> None:
    a = pods["a"]
    # Somebody else's rules, which neither apply nor clean may touch.
    for tool in ("iptables", "ip6tables"):
        a.run([tool, "-t", "nat", "-N", "OTHER"])
        a.run([tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "4444", "-j", "OTHER"])
        a.run([tool, "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "ACCEPT"])
    before = tables(a)
    routes = a.run(["ip", "route"]).stdout + a.run(["ip", "-6", "route"]).stdout

    tulle(a, "apply", "--vip-cidr", "10.96.0.0/16")
    once = tables(a)
    assert once != before and "TULLE_DNS" in once
    tulle(a, "apply", "--vip-cidr", "10.96.0.0/16")
    assert tables(a) == once
    assert a.run(["ip", "route", "show", "10.96.0.0/16"]).stdout.count("10.96.0.0/16") == 1

    tulle(a, "apply", "--no-redirect-dns", "--inbound-ports", "")
    other = tables(a)
    assert "TULLE_DNS" not in other and "TULLE_PREROUTING" not in other
    assert other.count("-j TULLE_OUTPUT") == 2  # one jump in each family

    out = tulle(a, "clean")
    assert "rules removed" in out.stdout
    assert tables(a) == before
    assert a.run(["ip", "route"]).stdout + a.run(["ip", "-6", "route"]).stdout == routes
    assert tulle(a, "clean").stdout.strip() == "nothing to remove"


def test_the_vip_range_is_routed_and_intercepted(pods: dict[str, Any]) -> None:
    a = pods["a"]
    # No default route in a testbed pod: without the range's route connect() fails at once.
    assert "default" not in a.run(["ip", "route"]).stdout
    tulle(a, "apply", "--vip-cidr", "10.96.0.0/16", "--vip-cidr", "fd00:96::/112")
    routes = a.run(["ip", "route", "show", "proto", "157"]).stdout
    assert routes.startswith("10.96.0.0/16 dev eth0")
    got = json.loads(call(a, "tcp", "10.96.0.10", 80))
    assert got["via"] == "outbound" and got["orig"] == ["10.96.0.10", 80]
    got6 = json.loads(call(a, "tcp", "fd00:96::a", 80))
    assert got6["orig"] == ["fd00:96::a", 80]
    tulle(a, "clean")
    assert a.run(["ip", "route", "show", "proto", "157"]).stdout == ""
    assert a.run(["ip", "-6", "route", "show", "proto", "157"]).stdout == ""


def test_errors_say_why_and_exit_non_zero(pods: dict[str, Any]) -> None:
    a = pods["a"]
    cli = ["-m", "tulle.cli.main", "iptables", "apply"]
    not_root = a.run(as_user(1001, cli), env=as_user_env(1001), check=False)
    assert not_root.returncode == 3
    assert "needs root" in not_root.stderr
    no_tools = a.run(["env", "PATH=/nonexistent", *TULLE, "iptables", "apply"], check=False)
    assert no_tools.returncode == 3
    assert "not found on PATH" in no_tools.stderr
    bad = tulle(a, "apply", "--exclude-outbound-cidrs", "10.0.0.1/8", check=False)
    assert bad.returncode == 2
    assert "--exclude-outbound-cidrs: '10.0.0.1/8' is not a CIDR" in bad.stderr
    assert "TULLE" not in tables(a)  # nothing half-applied
    dry = a.run(as_user(1001, [*cli, "--dry-run"]), env=as_user_env(1001))
    assert "-A OUTPUT -p tcp -j TULLE_OUTPUT" in dry.stdout


def test_legacy_backend_apply_and_clean(pods: dict[str, Any]) -> None:
    require_tools("iptables-legacy-save")
    a = pods["a"]
    tulle(a, "apply", "--backend", "legacy", "--no-ipv6")
    assert "-A OUTPUT -p tcp -j TULLE_OUTPUT" in a.run(["iptables-legacy-save"]).stdout
    assert json.loads(call(a, "tcp", "10.231.0.3", 8080))["via"] == "outbound"
    # auto finds Tulle's chains where they are.
    tulle(a, "clean")
    assert "TULLE" not in a.run(["iptables-legacy-save"]).stdout
    assert call(a, "tcp", "10.231.0.3", 8080) == "server 8080"


def _host_state() -> dict[str, str]:
    """The host namespace's tables, routes and links (this process runs in it)."""
    def run(*argv: str) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
        return "\n".join(re.sub(r"\[\d+:\d+\]", "[]", line) for line in out.splitlines()
                         if not line.startswith("#"))
    return {" ".join(argv): run(*argv) for argv in (
        ("iptables-save",), ("ip6tables-save",), ("ip", "route"), ("ip", "-6", "route"),
        ("ip", "-o", "link"))}


def test_the_host_namespace_is_never_touched() -> None:
    require_tools("iptables-save", "ip6tables-save")
    before = _host_state()
    with Testbed() as tb:
        a = tb.node("10.231.0.2/24", "fd00:231::2/64")
        b = tb.node("10.231.0.3/24", "fd00:231::3/64")
        start(b, SERVER, "server", "8080")
        tulle(a, "apply", "--vip-cidr", "10.96.0.0/16", "--vip-cidr", "fd00:96::/112")
        assert call(a, "tcp", "10.231.0.3", 8080, user=PROXY_UID) == "server 8080"
        assert _host_state() == before
        tulle(a, "clean")
    assert _host_state() == before


def test_a_pod_behind_a_node_has_its_vips_routed_already(testbed: Testbed) -> None:  # noqa: F811
    """A Kubernetes-like pod (default route to its node): the VIP range needs no route of ours,
    and a pod on another node is reached through the redirect."""
    require_tools("iptables-save", "setpriv")
    n1 = testbed.node("10.231.0.2/24", "fd00:231::2/64")
    n2 = testbed.node("10.231.0.3/24", "fd00:231::3/64")
    a = testbed.pod(n1, "10.232.1.2", "fd00:232::1:2")
    b = testbed.pod(n2, "10.232.2.2", "fd00:232::2:2")
    start(b, SERVER, "server", "8080")
    start(a, RECORDER, user=PROXY_UID)
    out = tulle(a, "apply", "--vip-cidr", "10.96.0.0/16").stdout
    assert "10.96.0.0/16: already routed" in out
    assert a.run(["ip", "route", "show", "proto", "157"]).stdout == ""
    got = json.loads(call(a, "tcp", "10.96.0.10", 80))
    assert got["orig"] == ["10.96.0.10", 80]
    got = json.loads(call(a, "tcp", "fd00:232::2:2", 8080))
    assert got["orig"] == ["fd00:232::2:2", 8080] and got["upstream"] == "server 8080\n"


def test_a_pod_calling_itself_goes_through_the_inbound_side_without_a_loop(
        pods: dict[str, Any]) -> None:
    a = pods["a"]
    tulle(a, "apply", "--exclude-inbound-ports", "9091")
    # app -> its own address -> outbound (15001) -> the proxy dials that address -> inbound (15006)
    got = json.loads(call(a, "tcp", "10.231.0.2", 9090))
    assert got["via"] == "outbound" and got["orig"] == ["10.231.0.2", 9090]
    assert json.loads(got["upstream"]) == {"via": "inbound", "orig": ["10.231.0.2", 9090]}
    got6 = json.loads(call(a, "tcp", "fd00:231::2", 9090))
    assert json.loads(got6["upstream"]) == {"via": "inbound", "orig": ["fd00:231::2", 9090]}
    # The inbound side's own dial to the app on loopback, and excluded ports, reach the app.
    assert call(a, "tcp", "127.0.0.1", 9091, user=PROXY_UID) == "app 9091"
    assert call(a, "tcp", "::1", 9091, user=PROXY_UID) == "app 9091"
    assert call(a, "tcp", "10.231.0.2", 9091, user=PROXY_UID) == "app 9091"
    # Without inbound interception the proxy's call to its own pod is left alone.
    tulle(a, "apply", "--inbound-ports", "")
    assert call(a, "tcp", "10.231.0.2", 9091, user=PROXY_UID) == "app 9091"


def refused(ns: Namespace, what: str, host: str, port: int, user: int = 1000) -> str:
    """Call as an application's uid; '' when it got through, else the error it met (a reset,
    "connection refused", EPERM at sendto come at once: nothing here waits out a timeout)."""
    out = ns.run(as_user(user, ["-c", CLIENT, what, host, str(port)]), timeout=30,
                 env=as_user_env(user), check=False)
    return "" if out.returncode == 0 else (out.stderr.strip().splitlines() or ["?"])[-1]


def link_local(ns: Namespace) -> str:
    out = ns.run(["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).stdout
    return out.split()[3].split("/")[0] + "%eth0"


def test_a_family_not_intercepted_is_refused_not_left_around_the_proxy(
        pods: dict[str, Any]) -> None:
    """`--no-ipv6` in a pod that has IPv6 (here a global address; a link-local one on every
    interface wherever the kernel runs IPv6) used to leave IPv6 alone: the application reached
    another pod's port over IPv6 in plaintext around its proxy, and was reached the same way
    around its inbound listener (ADR 0111).  Now that family is refused in and out (loopback
    and ICMP excepted), as `tulle iptables node apply` refuses a served pod's IPv6."""
    a, b = pods["a"], pods["b"]
    for tool in ("iptables", "ip6tables"):  # somebody else's rules that accept everything
        for chain in ("INPUT", "OUTPUT"):
            a.run([tool, "-A", chain, "-j", "ACCEPT"])
        a.run([tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "4444", "-j", "ACCEPT"])
    before = tables(a)
    tulle(a, "apply", "--no-ipv6")
    assert json.loads(call(a, "tcp", "10.231.0.3", 8080))["via"] == "outbound"  # IPv4: as ever
    for host in ("fd00:231::3", link_local(b)):
        assert "refused" in refused(a, "tcp", host, 8080), host  # out, TCP
    # Out, UDP (not DNS-redirected): a datagram refused on its way out fails at sendto().
    assert "Operation not permitted" in refused(a, "udp", "fd00:231::3", 53)
    for host in ("fd00:231::2", link_local(a)):
        assert "refused" in refused(b, "tcp", host, 9091), host  # in: the app's own port
    assert refused(a, "tcp", "::1", 9091) == ""  # loopback stays open
    # The proxy's uid keeps IPv6 (a control plane reached over it), and so does IPv4.
    assert call(a, "tcp", "fd00:231::3", 8080, user=PROXY_UID) == "server 8080"
    assert call(b, "tcp", "10.231.0.2", 9091).startswith("{")  # IPv4 inbound: redirected
    # Intercepting IPv6 again replaces the refusal; clean leaves the tables as they were.
    tulle(a, "apply")
    assert json.loads(call(a, "tcp", "fd00:231::3", 8080))["orig"] == ["fd00:231::3", 8080]
    tulle(a, "apply", "--no-ipv6")
    tulle(a, "clean")
    assert tables(a) == before
