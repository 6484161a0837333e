"""IPv6 through transparent sidecars (ADR 0088), end to end in network namespaces.

    [cp      10.231.0.10]               tulle control-plane run
    [client  10.231.0.2 / fd00:231::2]  python client ─▶ ip6tables OUTPUT ─▶ sidecar [::1]:15001
    [web-a   10.231.0.3 / fd00:231::3]  sidecar [::]:15006 ◀─ ip6tables PREROUTING; app :8080 :9000
    [outside 10.231.0.5 / fd00:231::5]  no sidecar: an echo on :7000 (both families), a caller
    [nov6    10.231.0.6]                IPv6 switched off in the namespace; a sidecar all the same

Every pod's interception is `tulle iptables apply` with its defaults: IPv6 redirected as well
as IPv4.  Before ADR 0088 the sidecars listened on IPv4 only, so each of the IPv6 calls below
was refused at a port where nothing listened (fail closed, but no IPv6 through a sidecar at
all).  Now:

- the client's IPv6 egress to a destination outside the mesh passes through its sidecar
  (`ALLOW_ANY`), which dials it from the pod's own IPv6 address;
- a call to web-a's IPv6 address is the same pod-IP call as to its IPv4 one
  (`Workload.spec.additionalAddresses`): over mTLS, proved on web-a's side;
- web-a's sidecar takes inbound IPv6: plaintext to a PERMISSIVE port reaches the app through
  it, plaintext to a STRICT port is refused (IPv6 is no way around mTLS);
- a dual-stack Service's name resolves to its IPv6 virtual IP, and a call there takes the
  Service's routes over mTLS;
- a DNS query to an IPv6 nameserver is answered by the sidecar's resolver on `::1`;
- a namespace without IPv6 still runs its sidecar: the `::1` sockets are skipped, said in the
  log.

Nothing touches the host namespace; the testbed removes every namespace afterwards.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support import meshnet as net
from tests.support.netns import require_tools
from tests.support.pods import as_user, as_user_env, write_scripts

from tulle.controlplane.vips import VIP_RANGE6
from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns

WEB6 = "fd00:231::3"
OUTSIDE6 = "fd00:231::5"

ECHO6 = r'''
import asyncio

async def echo(r, w):
    peer = w.get_extra_info("peername")[0].removeprefix("::ffff:")
    line = await r.readline()
    w.write(b"outside " + peer.encode() + b" " + line)
    await w.drain()
    w.close()

async def main():
    await asyncio.start_server(echo, ["0.0.0.0", "::"], 7000)
    await asyncio.Event().wait()

asyncio.run(main())
'''

CALL = r'''
import json, socket, sys
what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
try:
    if what == "http6":  # a name, resolved for IPv6 only, as an IPv6-preferring client does
        host = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)[0][4][0]
        out["resolved"] = host
    with socket.create_connection((host, port), timeout=10) as s:
        out["local"] = s.getsockname()[0]
        if what == "line":
            s.sendall(b"ping\n")
            out["answer"] = s.makefile("rb").readline().decode().strip()
        else:
            s.sendall(b"GET /six HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            out["status"] = int(head.split()[1]) if head else 0
            out["body"] = body.decode("latin-1")
except OSError as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out))
'''


def resources() -> list[dict[str, Any]]:
    def workload(name: str, address: str, address6: str | None,
                 ports: list[dict[str, Any]]) -> dict[str, Any]:
        spec: dict[str, Any] = {"address": address, "interception": "transparent",
                                "ports": ports, "serviceAccount": name}
        if address6:
            spec["additionalAddresses"] = [address6]
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                "spec": spec}

    return [
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
         "spec": {"mtls": {"mode": "STRICT"}, "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}},
        workload("client", "10.231.0.2", "fd00:231::2", []),
        workload("web-a", "10.231.0.3", WEB6, [{"port": 8080}, {"port": 9000}]),
        workload("nov6", "10.231.0.6", None, []),
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
         "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"selector": {"app": "web-a"},
                  "ipFamilyPolicy": "PreferDualStack",
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
                            {"name": "echo", "port": 9000, "appProtocol": "tcp"}]}},
        net.marking_route("web", 80),
        {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "MutualTLSPolicy",
         "metadata": {"name": "echo-permissive", "namespace": "shop"},
         "spec": {"targetRef": {"group": "", "kind": "Service", "name": "web",
                                "sectionName": "echo"}, "mode": "PERMISSIVE"}},
    ]


@pytest.fixture(scope="module")
def mesh() -> Iterator[dict[str, Any]]:
    require_tools("iptables", "ip6tables", "ss", "setpriv", "curl")
    workdir = Path(tempfile.mkdtemp(prefix="tulle-e2e-v6-"))
    workdir.chmod(0o755)
    tb = Testbed()
    try:
        yield _start(tb, workdir)
    finally:
        tb.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _start(tb: Testbed, workdir: Path) -> dict[str, Any]:
    cp = tb.node("10.231.0.10/24")
    pods = {"client": tb.node("10.231.0.2/24", "fd00:231::2/64"),
            "web-a": tb.node("10.231.0.3/24", f"{WEB6}/64"),
            "nov6": tb.node("10.231.0.6/24")}
    outside = tb.node("10.231.0.5/24", f"{OUTSIDE6}/64")
    pods["nov6"].run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                      "net.ipv6.conf.lo.disable_ipv6=1"])
    # The client has default routes, as a Kubernetes pod does, so its resolver's queries to the
    # nameserver of resolv.conf (wherever that is) leave the socket layer and are redirected to
    # its sidecar; the other pods rely on `--vip-cidr` routes alone.
    pods["client"].ip("-4", "route", "add", "default", "dev", "eth0")
    pods["client"].ip("-6", "route", "add", "default", "dev", "eth0")
    write_scripts(workdir)
    (workdir / "echo6.py").write_text(ECHO6)
    (workdir / "call.py").write_text(CALL)
    cli_env = net.start_control_plane(cp, workdir, resources())
    log = workdir / "outside.log"
    with log.open("wb") as out:
        outside.popen([sys.executable, str(workdir / "echo6.py")], stdout=out, stderr=out)
    net.wait_for("the outside echo", lambda: net.listening(outside, 7000), log)
    with (workdir / "web-a-app.log").open("wb") as out:
        pods["web-a"].popen([sys.executable, str(workdir / "app.py"), "web-a"],
                            stdout=out, stderr=out)
    net.wait_for("web-a's app", lambda: net.listening(pods["web-a"], 9000))

    logs: dict[str, Path] = {}
    for name, pod in pods.items():
        # the defaults: IPv4 and IPv6, outbound, inbound and DNS; both VIP ranges routed
        pod.run([*net.TULLE, "iptables", "apply", "--proxy-uid", str(net.PROXY_UID), "--vip-cidr",
                 "240.240.0.0/16", "--vip-cidr", str(VIP_RANGE6)], env=net.ENV)
        token = net.token_file(cp, workdir, name, cli_env)
        logs[name] = workdir / f"{name}-proxy.log"
        with logs[name].open("wb") as out:
            pod.popen(as_user(net.PROXY_UID, [
                "-m", "tulle.cli.main", "proxy", "run", "--control-plane",
                f"{cp.address}:{net.STREAM}", "--workload", name, "-n", "shop", "--address",
                pod.address, "--token-file", str(token)]),
                stdout=out, stderr=out, env=as_user_env(net.PROXY_UID, net.ENV))
        net.wait_for(f"{name}'s listeners", lambda pod=pod, name=name: net.listening(pod, 15001) and (
            name != "web-a" or net.listening(pod, 15006, "[::]")), logs[name])
    return {"cp": cp, "outside": outside, "workdir": workdir, "logs": logs, **pods}


def call(m: dict[str, Any], pod: str, what: str, host: str, port: int) -> dict[str, Any]:
    out = m[pod].run([sys.executable, str(m["workdir"] / "call.py"), what, host, str(port)],
                     timeout=60)
    return dict(json.loads(out.stdout))


def metric(ns: Namespace, text: str) -> float:
    """The value of the first series line starting with `text` (0 when none)."""
    body = ns.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/metrics"]).stdout
    for line in body.splitlines():
        if line.startswith(text):
            return float(line.rpartition(" ")[2])
    return 0.0


def test_ipv6_egress_passes_through_the_sidecar(mesh: dict[str, Any]) -> None:
    passed = 'tulle_proxy_upstream_connections_total{cluster="PassthroughCluster"}'
    before = metric(mesh["client"], passed)
    got = call(mesh, "client", "line", OUTSIDE6, 7000)
    # the outside server saw the pod's own IPv6 address: the sidecar dialled it from there
    assert got.get("answer") == "outside fd00:231::2 ping", got
    assert metric(mesh["client"], passed) == before + 1


def test_a_call_to_a_pods_ipv6_address_is_a_pod_ip_call_over_mtls(mesh: dict[str, Any]) -> None:
    chain = 'tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"}'
    before = metric(mesh["web-a"], chain)
    got = call(mesh, "client", "http", WEB6, 8080)
    assert got.get("status") == 200, got
    assert json.loads(got["body"])["path"] == "/six"
    assert metric(mesh["web-a"], chain) == before + 1  # web-a's sidecar took it over mTLS
    assert metric(mesh["client"], 'tulle_proxy_requests_total{listener="outbound",'
                                  'cluster="pod|8080||web-a.shop"') >= 1


def test_inbound_ipv6_is_taken_by_the_sidecar_and_strict_still_holds(
        mesh: dict[str, Any]) -> None:
    taken = 'tulle_proxy_downstream_connections_total{listener="inbound"}'
    before = metric(mesh["web-a"], taken)
    got = call(mesh, "outside", "line", WEB6, 9000)  # PERMISSIVE: plaintext accepted
    assert got.get("answer") == "web-a ping", got
    assert metric(mesh["web-a"], taken) == before + 1  # through the sidecar, not around it
    got = call(mesh, "outside", "http", WEB6, 8080)  # STRICT: plaintext refused
    assert "status" not in got or got["status"] == 0, got
    assert metric(mesh["web-a"], 'tulle_proxy_protocol_errors_total{listener="inbound",'
                                 'kind="no_filter_chain"}') >= 1


def test_a_service_called_by_name_over_ipv6_takes_its_routes_over_mtls(
        mesh: dict[str, Any]) -> None:
    """A dual-stack Service (`ipFamilyPolicy: PreferDualStack`): the name resolves (AAAA, at
    the client's sidecar) to its IPv6 virtual IP, and a connection there is routed by the
    Service's own table -- its HTTPRoute runs -- to web-a over mTLS."""
    chain = 'tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"}'
    before = metric(mesh["web-a"], chain)
    deadline = time.monotonic() + 20
    while True:  # the VIP is allocated, then reaches the client's sidecar with a snapshot
        got = call(mesh, "client", "http6", "web.shop.svc.cluster.local", 80)
        if got.get("status") == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got.get("status") == 200, got
    assert ipaddress.ip_address(got["resolved"]) in VIP_RANGE6
    seen = json.loads(got["body"])
    assert seen["headers"]["x-route"] == "web"  # the Service's HTTPRoute ran
    assert metric(mesh["web-a"], chain) == before + 1
    assert metric(mesh["client"], 'tulle_proxy_requests_total{listener="outbound",'
                                  'cluster="outbound|80||web.shop"') >= 1


def test_dns_to_an_ipv6_nameserver_is_answered_by_the_sidecar(mesh: dict[str, Any]) -> None:
    """Any IPv6 nameserver the pod asks is redirected to the sidecar's resolver on `::1`
    (this one exists nowhere): the mesh name answers the Service's virtual IP."""
    vip = ""

    def allocated() -> bool:
        nonlocal vip
        out = mesh["cp"].run([*net.TULLE, "get", "service", "web", "-n", "shop", "-o", "json"],
                             env={**net.ENV, "TULLE_TOKEN_FILE": str(mesh["workdir"] / "admin-token")})
        vip = (json.loads(out.stdout).get("status") or {}).get("virtualIP") or ""
        return bool(vip)

    net.wait_for("web's virtual IP", allocated)
    query = ("import dns.message, dns.query, sys; "
             "r = dns.query.udp(dns.message.make_query('web.shop.svc.cluster.local', 'A'), "
             "'fd00:231::53', timeout=5); print(r.answer[0][0].address)")
    deadline = time.monotonic() + 20
    while True:  # the client's sidecar learns the VIP with its next snapshot
        out = mesh["client"].run([sys.executable, "-c", query], timeout=30, check=False)
        if out.stdout.strip() == vip or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out.stdout.strip() == vip, (out.stdout, out.stderr)


def test_a_namespace_without_ipv6_runs_its_sidecar_on_ipv4(mesh: dict[str, Any]) -> None:
    pod = mesh["nov6"]
    assert net.listening(pod, 15001, "127.0.0.1") and net.listening(pod, 15053, "127.0.0.1")
    assert not net.listening(pod, 15001, "[::1]")
    log = mesh["logs"]["nov6"].read_text()
    assert "listener outbound: not listening on [::1]:15001" in log, log[-3000:]
    assert "dns: not answering on [::1]:15053" in log, log[-3000:]
    got = call(mesh, "nov6", "line", mesh["outside"].address, 7000)  # IPv4 egress as ever
    assert got.get("answer") == "outside 10.231.0.6 ping", got


def test_a_connection_straight_to_the_ipv6_outbound_socket_is_a_loop(mesh: dict[str, Any]) -> None:
    """`[::1]:15001` is not redirected (loopback), so its original destination is the socket
    itself: refused as a loop and counted, as on `127.0.0.1` -- never relayed to itself."""
    loops = 'tulle_proxy_protocol_errors_total{listener="outbound",kind="loop"}'
    before = metric(mesh["client"], loops)
    got = call(mesh, "client", "line", "::1", 15001)
    assert "answer" not in got or got["answer"] == "", got
    assert metric(mesh["client"], loops) == before + 1
