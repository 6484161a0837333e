"""Transparent listeners compiled by the control plane, end to end in network namespaces
(issue 11 item 2, ADR 0044).

    [cp 10.231.0.10]  tulle control-plane run (stream on 0.0.0.0:15680, API on its loopback)
    [client 10.231.0.2]  python client ─▶ iptables OUTPUT REDIRECT :15001 ─▶ sidecar (uid 1337)
    [web-a 10.231.0.3]   sidecar :15006 ◀─ PREROUTING REDIRECT ◀── mTLS ──┘   app :8080, :9000
    [web-b 10.231.0.4]   sidecar :15006 ◀─ PREROUTING REDIRECT ◀── mTLS        app :9000

Every sidecar is the real `tulle proxy run --control-plane` process under uid 1337, admitted by a
bootstrap token; the Workloads say `interception: transparent`, so each gets the outbound
listener (by original destination) and the inbound one (chains by destination port) from the
compiler.  Interception is `tulle iptables apply` in each pod (the rules themselves are
tests/e2e/test_iptables.py's subject), which also routes the virtual-IP range to eth0.  The
pods' application and client are tests/support/pods.py's.  Nothing touches the host
namespace: the control plane lives in a pod namespace of its own and the CLI runs there.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support import meshnet as net
from tests.support.netns import require_tools, testbed  # noqa: F401
from tests.support.pods import as_user, as_user_env, write_scripts

from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns


def resources() -> list[dict[str, Any]]:
    def workload(name: str, address: str, app: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                "spec": {"address": address, "interception": "transparent", "ports": ports,
                         "serviceAccount": name}}

    def service(name: str, selector: dict[str, str], port: int, proto: str) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"selector": selector,
                         "ports": [{"port": port, "targetPort": 8080 if port == 80 else port,
                                    "appProtocol": proto}]}}

    return [
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
         "spec": {"mtls": {"mode": "STRICT"}, "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}},
        workload("client", "10.231.0.2", "client", []),
        # The workload ports say nothing of their protocol: the Services' appProtocol decides.
        workload("web-a", "10.231.0.3", "web", [{"port": 8080}, {"port": 9000}]),
        workload("web-b", "10.231.0.4", "echo-b", [{"port": 9000}]),
        service("web", {"app": "web"}, 80, "http"),
        service("echo-a", {"app": "web"}, 9000, "tcp"),
        service("echo-b", {"app": "echo-b"}, 9000, "tcp"),
        {**service("echo", {"app": "nothing-selected"}, 9000, "tcp")},
        # The Service's route marks what it routes: a pod-IP call must not carry the mark.
        net.marking_route("web", 80),
        {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
         "metadata": {"name": "echo-split", "namespace": "shop"},
         "spec": {"parentRefs": [{"kind": "Service", "name": "echo", "port": 9000}],
                  "rules": [{"backendRefs": [{"name": "echo-a", "port": 9000, "weight": 1},
                                             {"name": "echo-b", "port": 9000, "weight": 3}]}]}},
    ]


def intercept(ns: Namespace) -> None:
    """A sidecar's interception, as a pod's init step would do it: outbound TCP to 15001 (not
    the proxy's own, by uid), inbound TCP to 15006, the virtual-IP range routed to eth0."""
    ns.run([*net.TULLE, "iptables", "apply", "--no-ipv6", "--no-redirect-dns",
            "--proxy-uid", str(net.PROXY_UID), "--vip-cidr", "240.240.0.0/16"], env=net.ENV)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tulle-e2e-n3-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mesh(testbed: Testbed, workdir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    require_tools("iptables", "ss", "setpriv", "curl")
    cp = testbed.node("10.231.0.10/24")
    pods = {name: testbed.node(f"{ip}/24") for name, ip in
            (("client", "10.231.0.2"), ("web-a", "10.231.0.3"), ("web-b", "10.231.0.4"))}
    write_scripts(workdir)
    cli_env = net.start_control_plane(cp, workdir, resources())

    for name, pod in pods.items():
        if name != "client":
            log = workdir / f"{name}-app.log"
            with log.open("wb") as out:
                pod.popen([sys.executable, str(workdir / "app.py"), name], stdout=out, stderr=out)
            net.wait_for(f"{name}'s app", lambda pod=pod: net.listening(pod, 9000), log)
        intercept(pod)
        token = net.token_file(cp, workdir, name, cli_env)
        log = workdir / f"{name}-proxy.log"
        with log.open("wb") as out:
            pod.popen(as_user(net.PROXY_UID, [
                "-m", "tulle.cli.main", "proxy", "run", "--control-plane",
                f"{cp.address}:{net.STREAM}", "--workload", name, "-n", "shop", "--address",
                pod.address, "--token-file", str(token)]),
                stdout=out, stderr=out, env=as_user_env(net.PROXY_UID, net.ENV))
        net.wait_for(f"{name}'s transparent listeners",
                 lambda pod=pod, name=name: net.listening(pod, 15001) and (
                     name == "client" or net.listening(pod, 15006)), log)
    yield {"cp": cp, "workdir": workdir, **pods}


def client(m: dict[str, Any], *args: str) -> dict[str, Any]:
    out = m["client"].run([sys.executable, str(m["workdir"] / "client.py"), *args], timeout=60)
    return dict(json.loads(out.stdout))


def vip(m: dict[str, Any], service: str) -> str:
    """The Service's virtual IP, once allocated and in the client sidecar's listener."""
    got: list[str] = []

    def allocated() -> bool:
        out = m["cp"].run([*net.TULLE, "get", "service", service, "-n", "shop", "-o", "json"],
                          env={**net.ENV, "TULLE_TOKEN_FILE": str(m["workdir"] / "admin-token")})
        ip = (json.loads(out.stdout).get("status") or {}).get("virtualIP")
        if not ip:
            return False
        dump = m["client"].run(["curl", "-sS", "--max-time", "5",
                                "http://127.0.0.1:15000/config_dump"]).stdout
        got[:] = [ip]
        return f'"{ip}"' in dump

    net.wait_for(f"{service}'s virtual IP in the client's outbound listener", allocated)
    return got[0]


def metrics(ns: Namespace) -> str:
    return ns.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/metrics"]).stdout


def test_service_vip_pod_ip_tcproute_and_registry_only(mesh: dict[str, Any]) -> None:
    # 1. The Service's VIP: routed by its own routes over mTLS, whatever the Host header says.
    got = client(mesh, "http", vip(mesh, "web"), "80", "/hello")
    assert got["status"] == 200, got
    seen = json.loads(got["body"])
    assert (seen["name"], seen["path"]) == ("web-a", "/hello")
    assert seen["headers"]["host"] == "not-the-service.example"
    assert seen["headers"]["x-route"] == "web"  # the Service's HTTPRoute ran
    assert len(seen["headers"]["x-request-id"]) == 36  # through the client's HTTP path
    server = metrics(mesh["web-a"])
    # The server's sidecar took it on the mTLS chain of port 8080 (STRICT: no other chain).
    assert ('tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"} 1'
            in server), server
    assert 'tulle_proxy_requests_total{listener="outbound",cluster="outbound|80||web.shop"' \
        in metrics(mesh["client"])

    # 2. A pod IP: to that pod unchanged (its own port, not the Service's), still over mTLS.
    got = client(mesh, "http", "10.231.0.3", "8080", "/direct")
    assert got["status"] == 200, got
    direct = json.loads(got["body"])
    assert direct["path"] == "/direct" and "x-route" not in direct["headers"], direct
    assert ('tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"} 2'
            in metrics(mesh["web-a"]))
    assert 'cluster="pod|8080||web-a.shop"' in metrics(mesh["client"])

    # 3. A TCPRoute splits the `echo` Service's connections 1:3 between two backends (weighted
    #    round robin over both backends' endpoints; `echo` itself selects no workload).
    seen = client(mesh, "echoes", vip(mesh, "echo"), "9000", "12")["seen"]
    a, b = seen.count("web-a"), seen.count("web-b")
    assert a + b == 12 and 1 <= a <= 5 and b > a, seen
    assert ('tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:9000|mtls"}'
            in metrics(mesh["web-b"]))

    # 4. REGISTRY_ONLY: a destination outside the mesh is refused and counted; the listener
    #    stays up and keeps serving.
    assert client(mesh, "refused", mesh["cp"].address, "15681")["data"] == ""
    m = metrics(mesh["client"])
    assert 'tulle_proxy_protocol_errors_total{listener="outbound",kind="no_destination"} 1' in m
    assert client(mesh, "http", vip(mesh, "web"), "80", "/again")["status"] == 200


def test_a_plaintext_caller_cannot_reach_a_strict_port(mesh: dict[str, Any]) -> None:
    """From the control plane's namespace (no sidecar), straight to the pod: STRICT refuses."""
    out = mesh["cp"].run(["curl", "-sS", "--max-time", "5", "http://10.231.0.3:8080/"],
                         check=False)
    assert out.returncode != 0 and "name" not in out.stdout
    m = metrics(mesh["web-a"])
    assert 'tulle_proxy_protocol_errors_total{listener="inbound",kind="no_filter_chain"} 1' in m


def test_a_transparent_pod_resolves_service_names_at_its_sidecar(mesh: dict[str, Any]) -> None:
    """A transparent pod's sidecar runs mesh DNS on 15053 without being asked (ADR 0042: the
    port `tulle iptables` sends the pod's DNS to): the Service's name answers its VIP."""
    address = vip(mesh, "web")
    query = ("import dns.message, dns.query, sys; "
             "r = dns.query.udp(dns.message.make_query(sys.argv[1], 'A'), '127.0.0.1', "
             "port=15053, timeout=5); print(r.answer[0][0].address)")
    for name in ("web.shop.svc.cluster.local", "web"):
        out = mesh["client"].run([sys.executable, "-c", query, name], timeout=30)
        assert out.stdout.strip() == address, (name, out.stdout, out.stderr)
