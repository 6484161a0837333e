"""Per-node agent mode end to end in network namespaces (issue 11 item 4, ADR 0047).

    [cp 10.231.0.10]      tulle control-plane run
    [server 10.231.0.3]   sidecar (tulle iptables apply) :15006 ─▶ app :8080   STRICT, authz
    [node 10.231.0.5]     ONE agent: tulle proxy run --node-config (pod-a, pod-b)
       │  TULLE_NODE: -i <veth> -s <pod> -p tcp -j DNAT 127.0.0.1:<pod's port>
       ├── [pod-a 10.232.0.2]  plain python client, no proxy, no iptables  ─▶ agent :15001
       ├── [pod-b 10.232.0.3]  plain python client, no proxy, no iptables  ─▶ agent :15002
       └── [api 10.232.0.4]    app :8080 ◀─ agent :15103 ◀─ DNAT -d 10.232.0.4 ◀─ mTLS from
                               the server's sidecar (`interception: agent`, inbound too)

The pods run nothing of Tulle's: their traffic reaches the agent because the node steers it
(`tulle iptables node apply`).  The agent holds one certificate per pod and calls the server
with the certificate of the pod the connection came from; the server's sidecar allows only
pod-a's service account, so pod-a gets 200 and pod-b 403 from the *server's* authorization:
two distinct SPIFFE identities through one agent.  The other way, the server's sidecar calls
the `api` Service, whose pod is served by the same agent: the agent terminates mTLS with api's
certificate, applies api's policy and forwards to the pod.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support import meshnet as net
from tests.support.netns import require_tools, testbed  # noqa: F401
from tests.support.pods import as_user, as_user_env, write_scripts

from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns

PODS = {"pod-a": ("10.232.0.2", 15001), "pod-b": ("10.232.0.3", 15002)}
API_POD, API_OUT, API_IN = "10.232.0.4", 15003, 15103

def resources() -> list[dict[str, Any]]:
    def workload(name: str, address: str, ports: list[dict[str, Any]],
                 **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                "spec": {"address": address, "interception": "transparent", "ports": ports,
                         "serviceAccount": name, **spec}}

    def service(name: str) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"selector": {"app": name},
                         "ports": [{"port": 80, "targetPort": 8080, "appProtocol": "http"}]}}

    def only(name: str, target: str, account: str) -> dict[str, Any]:
        return {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"targetRef": {"group": "", "kind": "Service", "name": target},
                         "rules": [{"from": [{"serviceAccounts": [account]}]}]}}

    return [
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
         "spec": {"mtls": {"mode": "STRICT"}, "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}},
        workload("server", "10.231.0.3", [{"port": 8080}]),
        *(workload(name, ip, [], interception="agent", outboundPort=port)
          for name, (ip, port) in PODS.items()),
        workload("api", API_POD, [{"port": 8080}], interception="agent",
                 outboundPort=API_OUT, inboundPort=API_IN),
        service("server"), service("api"),
        only("only-pod-a", "server", "shop/pod-a"),
        only("only-server", "api", "shop/server"),
        # ALLOW policies add up: api takes the server's sidecar and pod-a, a pod of its own
        # agent (ADR 0050), not pod-b.
        only("and-pod-a", "api", "shop/pod-a"),
    ]


def nat_rules(ns: Namespace) -> str:
    """Every table's rules (the comments with their timestamps left out)."""
    return "".join(line for line in ns.run(["iptables-save"]).stdout.splitlines(keepends=True)
                   if not line.startswith("#"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tulle-e2e-n6-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _proxy(ns: Namespace, args: list[str], log: Path) -> None:
    with log.open("wb") as out:
        ns.popen(as_user(net.PROXY_UID, ["-m", "tulle.cli.main", "proxy", "run", *args]),
                 stdout=out, stderr=out, env=as_user_env(net.PROXY_UID, net.ENV))


@pytest.fixture
def mesh(testbed: Testbed, workdir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    require_tools("iptables", "iptables-save", "ss", "setpriv", "curl")
    cp = testbed.node("10.231.0.10/24")
    server = testbed.node("10.231.0.3/24")
    node = testbed.node("10.231.0.5/24")
    pods = {name: testbed.pod(node, ip) for name, (ip, _) in PODS.items()}
    api = testbed.pod(node, API_POD)
    write_scripts(workdir)
    cli_env = net.start_control_plane(cp, workdir, resources())

    def token(name: str) -> Path:
        return net.token_file(cp, workdir, name, cli_env)

    # The server: a sidecar, intercepted by `tulle iptables apply`.
    log = workdir / "server-app.log"
    with log.open("wb") as out:
        server.popen([sys.executable, str(workdir / "app.py"), "server"], stdout=out, stderr=out)
    net.wait_for("the server's app", lambda: net.listening(server, 8080), log)
    log = workdir / "api-app.log"
    with log.open("wb") as out:
        api.popen([sys.executable, str(workdir / "app.py"), "api"], stdout=out, stderr=out)
    net.wait_for("the api pod's app", lambda: net.listening(api, 8080), log)
    server.run([*net.TULLE, "iptables", "apply", "--no-ipv6", "--no-redirect-dns",
                "--vip-cidr", "240.240.0.0/16"], env=net.ENV)
    log = workdir / "server-proxy.log"
    _proxy(server, ["--control-plane", f"{cp.address}:{net.STREAM}", "--workload", "server",
                    "-n", "shop", "--address", server.address,
                    "--token-file", str(token("server"))], log)
    net.wait_for("the server's sidecar", lambda: net.listening(server, 15006), log)

    # The node: one agent for both pods, each with its own token and outbound port.
    node_cfg = {"workloads": [
        {"name": name, "namespace": "shop", "address": ip, "serviceAccount": name,
         "outboundPort": port, "tokenFile": str(token(name))}
        for name, (ip, port) in (*PODS.items(), ("api", (API_POD, API_OUT)))]}
    (workdir / "node.yaml").write_text(yaml.safe_dump(node_cfg))
    log = workdir / "agent.log"
    _proxy(node, ["--control-plane", f"{cp.address}:{net.STREAM}", "--node-config",
                  str(workdir / "node.yaml")], log)
    net.wait_for("the agent's outbound listeners and api's inbound one",
             lambda: all(net.listening(node, port) for port in (*STEER.values(), API_IN)), log)
    node.run([*net.TULLE, "iptables", "node", "apply", *STEER_ARGS], env=net.ENV)
    yield {"cp": cp, "server": server, "node": node, "workdir": workdir, "agent_log": log,
           "api": api, **pods}


STEER = {ip: port for ip, port in (*PODS.values(), (API_POD, API_OUT))}
STEER_ARGS = [*(f"--pod={ip}={port}" for ip, port in PODS.values()),
              f"--pod={API_POD}={API_OUT}:{API_IN}"]


def client(m: dict[str, Any], pod: str, *args: str) -> dict[str, Any]:
    out = m[pod].run([sys.executable, str(m["workdir"] / "client.py"), *args], timeout=60)
    return dict(json.loads(out.stdout))


def vip(m: dict[str, Any], service: str = "server", proxy: str = "node") -> str:
    """A Service's virtual IP, once it is in the listeners of `proxy` (the agent)."""
    got: list[str] = []

    def allocated() -> bool:
        out = m["cp"].run([*net.TULLE, "get", "service", service, "-n", "shop", "-o", "json"],
                          env={**net.ENV, "TULLE_TOKEN_FILE": str(m["workdir"] / "admin-token")})
        ip = (json.loads(out.stdout).get("status") or {}).get("virtualIP")
        if not ip:
            return False
        dump = m[proxy].run(["curl", "-sS", "--max-time", "5",
                              "http://127.0.0.1:15000/config_dump"]).stdout
        got[:] = [ip]
        return f'"{ip}"' in dump

    net.wait_for(f"{service}'s virtual IP in {proxy}'s outbound listener", allocated)
    return got[0]


def metrics(ns: Namespace) -> str:
    return ns.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/metrics"]).stdout


def test_one_agent_two_pods_two_identities(mesh: dict[str, Any]) -> None:
    ip = vip(mesh)
    # pod-a: allowed by the server's policy, so it arrived as spiffe://.../sa/pod-a.
    got = client(mesh, "pod-a", "http", ip, "80", "/from-a")
    assert got["status"] == 200, (got, mesh["agent_log"].read_text()[-3000:])
    seen = json.loads(got["body"])
    assert (seen["name"], seen["path"]) == ("server", "/from-a")
    # pod-b: the same agent, the same route, but its own certificate: the server refuses it.
    got = client(mesh, "pod-b", "http", ip, "80", "/from-b")
    assert got["status"] == 403, got
    server = metrics(mesh["server"])
    # Both arrived at the server's sidecar over mTLS on port 8080's chain.
    assert ('tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"} 2'
            in server), server
    agent = metrics(mesh["node"])
    # Each pod's connection came in on its own listener of the agent.
    # No pod's token reaches the agent's log, nor the agent's config dump.
    dump = mesh["node"].run(["curl", "-sS", "--max-time", "5",
                             "http://127.0.0.1:15000/config_dump"]).stdout
    for name in (*PODS, "api"):
        token = (mesh["workdir"] / f"{name}.token").read_text().strip()
        assert token not in mesh["agent_log"].read_text() and token not in dump
        assert token.split(".")[-1] not in dump  # not even its signature
    # Each pod's connection came in on its own listener of the agent and left through that
    # pod's own cluster (its certificate): the 200 on pod-a's, the 403 on pod-b's.
    for name, code in (("pod-a", 200), ("pod-b", 403)):
        assert (f'tulle_proxy_requests_total{{listener="shop/{name}|outbound",'
                f'cluster="shop/{name}|outbound|80||server.shop",response_code="{code}",'
                'response_flags="-"} 1') in agent, agent


def test_a_pod_cannot_borrow_another_pods_listener(mesh: dict[str, Any]) -> None:
    ip = vip(mesh)
    # pod-b dials pod-a's agent port on its gateway: steered to pod-b's own listener, whose
    # original destination (169.254.1.1:15001) is no mesh destination: refused (REGISTRY_ONLY).
    assert client(mesh, "pod-b", "refused", "169.254.1.1", "15001")["data"] == ""
    assert ('tulle_proxy_protocol_errors_total{listener="shop/pod-b|outbound",'
            'kind="no_destination"} 1') in metrics(mesh["node"])
    # From another node, the agent's pod listeners are not reachable at all (loopback only).
    out = mesh["cp"].run(["curl", "-sS", "--max-time", "5",
                          f"http://{mesh['node'].address}:15001/"], check=False)
    assert out.returncode != 0
    # Nothing reached the server as pod-a from pod-b; the agent keeps serving.
    assert client(mesh, "pod-a", "http", ip, "80", "/again")["status"] == 200
    assert client(mesh, "pod-b", "http", ip, "80", "/again")["status"] == 403


def test_node_steering_apply_is_idempotent_and_clean_removes_it(mesh: dict[str, Any]) -> None:
    node: Namespace = mesh["node"]
    before = nat_rules(node)
    # Three pods out, their DNS (UDP and TCP) to the agent's resolver, api in (from the
    # node's one uplink).
    assert before.count("-j TULLE_NODE\n") == 1 and before.count("DNAT") == 4 + 6 + 1, before
    # The agent's own dials to api's loopback alias go to api's inbound listener.
    assert ("-A TULLE_NODE_OUT -d 127.1.58.255/32 -p tcp -j DNAT --to-destination "
            "127.0.0.1:15103") in before, before
    assert before.count("--dport 53 -j DNAT --to-destination 127.0.0.1:15053") == 6, before
    # A packet a pod crafts for the node's loopback (route_localnet is on) is dropped first.
    assert len([ln for ln in before.splitlines() if ln.startswith("-A TULLE_NODE_GUARD")
                and "-d 127.0.0.0/8" in ln and ln.endswith("-j DROP")]) == 4, before
    node.run([*net.TULLE, "iptables", "node", "apply", *STEER_ARGS], env=net.ENV)
    assert nat_rules(node) == before
    devs = [line.split()[line.split().index("-i") + 1] for line in before.splitlines()
            if line.startswith("-A TULLE_NODE") and " -i " in line]
    assert all(node.run(["sysctl", "-n", f"net.ipv4.conf.{d}.route_localnet"]).stdout.strip()
               == "1" for d in devs)
    node.run([*net.TULLE, "iptables", "node", "clean"], env=net.ENV)
    after = nat_rules(node)
    assert "TULLE_NODE" not in after, after  # every chain and jump
    assert all(node.run(["sysctl", "-n", f"net.ipv4.conf.{d}.route_localnet"]).stdout.strip()
               == "0" for d in devs)
    # Without steering the pod's call is forwarded in plaintext, unauthenticated: the
    # server's STRICT sidecar refuses it (nothing falls back to a weaker path silently).
    out = client(mesh, "pod-a", "refused", "10.231.0.3", "8080")
    assert "server" not in out["data"]
    before_calls = metrics(node)
    assert client(mesh, "pod-a", "refused", "10.231.0.3", "8080")["data"] == ""
    assert metrics(node).count("downstream_connections_total") == before_calls.count(
        "downstream_connections_total")


def test_the_agent_serves_a_pods_inbound_side_with_that_pods_identity(
        mesh: dict[str, Any]) -> None:
    ip = vip(mesh, "api", "server")
    # From the server pod (its sidecar, as shop/server): VIP -> mTLS to 10.232.0.4:8080, which
    # the node steers to the agent; api's policy (only shop/server) lets it through.
    out = mesh["server"].run([sys.executable, str(mesh["workdir"] / "client.py"), "http", ip,
                              "80", "/in"], timeout=60)
    got = json.loads(out.stdout)
    assert got["status"] == 200, (got, mesh["agent_log"].read_text()[-3000:])
    seen = json.loads(got["body"])
    # The app was called by the agent (from the node's end of its veth), not by the caller.
    assert (seen["name"], seen["path"], seen["peer"]) == ("api", "/in", "169.254.1.1")
    agent = metrics(mesh["node"])
    assert ('tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"} 1'
            in agent), agent
    # Plaintext straight to the pod from a namespace without a sidecar: steered to the agent
    # too, where STRICT has no plaintext chain; an undeclared port has none either.  Nothing
    # reaches the app around the agent.
    for port in ("8080", "9999"):
        out = mesh["cp"].run(["curl", "-sS", "--max-time", "5", f"http://{API_POD}:{port}/"],
                             check=False)
        assert out.returncode != 0 and "api" not in out.stdout, out.stdout
    assert ('tulle_proxy_protocol_errors_total{listener="inbound",kind="no_filter_chain"} 2'
            in metrics(mesh["node"]))


RESOLVE = r'''
import json, sys
import dns.message, dns.query, dns.rcode
proto, name = sys.argv[1], sys.argv[2]
ask = dns.query.udp if proto == "udp" else dns.query.tcp
# Any nameserver the pod routes (its default route, through the node): the node steers port 53.
r = ask(dns.message.make_query(name, "A"), "10.96.0.10", timeout=5)
print(json.dumps({"rcode": dns.rcode.to_text(r.rcode()),
                  "addresses": [x.address for rrset in r.answer for x in rrset]}))
'''


def test_an_agent_pod_resolves_mesh_names_at_its_agent(mesh: dict[str, Any]) -> None:
    """ADR 0050: the pod runs nothing of Tulle's and asks an ordinary nameserver; the node
    steers its port 53 to the agent's resolver, which answers the Service names with their
    virtual IPs (the bare name in the pod's own namespace, by the query's source)."""
    ip = vip(mesh)
    (mesh["workdir"] / "resolve.py").write_text(RESOLVE)
    for proto in ("udp", "tcp"):
        for name in ("server.shop.svc.cluster.local", "server.shop.mesh", "server"):
            out = mesh["pod-a"].run([sys.executable, str(mesh["workdir"] / "resolve.py"),
                                     proto, name], timeout=30)
            assert json.loads(out.stdout) == {"rcode": "NOERROR", "addresses": [ip]}, (
                proto, name, out.stdout, out.stderr)
    out = mesh["pod-b"].run([sys.executable, str(mesh["workdir"] / "resolve.py"), "udp",
                             "nothing.shop.mesh"], timeout=30)
    assert json.loads(out.stdout)["rcode"] == "NXDOMAIN"
    m = metrics(mesh["node"])
    assert 'tulle_proxy_dns_queries_total{protocol="udp",result="mesh"} 3' in m, m
    assert 'tulle_proxy_dns_queries_total{protocol="tcp",result="mesh"} 3' in m, m
    # An unmodified client then calls the name end to end: glibc asks the pod's nameserver
    # (resolv.conf), the agent answers, the call goes through the agent.
    servers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
               if line.startswith("nameserver")]
    if servers and not ipaddress.ip_address(servers[0]).is_loopback:
        got = client(mesh, "pod-a", "http", "server.shop.svc.cluster.local", "80", "/by-name")
        assert got["status"] == 200 and json.loads(got["body"])["path"] == "/by-name", got


def test_two_pods_of_one_agent_call_each_other_each_with_its_own_identity(
        mesh: dict[str, Any]) -> None:
    """ADR 0050: pod-a and pod-b call `api`, a pod behind the same agent.  The agent dials
    api's loopback alias with the caller's certificate, the node DNATs it to api's inbound
    listener, which terminates mTLS with api's certificate and applies api's policy: pod-a is
    allowed, pod-b refused, and the application is reached by the agent only."""
    ip = vip(mesh, "api")
    got = client(mesh, "pod-a", "http", ip, "80", "/a-to-api")
    assert got["status"] == 200, (got, mesh["agent_log"].read_text()[-3000:])
    seen = json.loads(got["body"])
    assert (seen["name"], seen["path"], seen["peer"]) == ("api", "/a-to-api", "169.254.1.1")
    assert client(mesh, "pod-b", "http", ip, "80", "/b-to-api")["status"] == 403
    # By pod IP too (no Service routes): the same inbound listener, the same policy.
    assert client(mesh, "pod-a", "http", API_POD, "8080", "/by-ip")["status"] == 200
    m = metrics(mesh["node"])
    assert ('tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"} 3'
            in m), m
    for name, code in (("pod-a", 200), ("pod-b", 403)):
        assert (f'tulle_proxy_requests_total{{listener="shop/{name}|outbound",'
                f'cluster="shop/{name}|outbound|80||api.shop",response_code="{code}",'
                'response_flags="-"} 1') in m, m


def allow_any(m: dict[str, Any]) -> None:
    """Switch the Mesh to `ALLOW_ANY` (the default policy) and wait until the agent's pod
    listeners pass unknown destinations through."""
    (m["workdir"] / "allow-any.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
         "spec": {"mtls": {"mode": "STRICT"}, "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}}))
    m["cp"].run([*net.TULLE, "apply", "-f", str(m["workdir"] / "allow-any.yaml")],
                env={**net.ENV, "TULLE_TOKEN_FILE": str(m["workdir"] / "admin-token")})

    def passing() -> bool:
        dump = json.loads(m["node"].run(["curl", "-sS", "--max-time", "5",
                                         "http://127.0.0.1:15000/config_dump"]).stdout)
        return any(lc.get("name") == "shop/pod-a|outbound" and lc.get("passthrough")
                   for lc in dump.get("listeners") or [])

    net.wait_for("ALLOW_ANY in the agent's pod listeners", passing)


def test_a_pods_passthrough_never_reaches_a_same_node_pods_undeclared_port(
        mesh: dict[str, Any]) -> None:
    """ADR 0114: under ALLOW_ANY the agent relays a call to an unknown destination from the
    node.  `api` declares 8080 only; its application also answers on 9000.  pod-a calling
    api:9000 was relayed as passthrough and reached the application in plaintext (it saw the
    node, 169.254.1.1), past api's inbound side, which closes that port to any other caller.
    The agent now refuses such a destination at the caller's listener, with its reason."""
    allow_any(mesh)
    got = client(mesh, "pod-a", "refused", API_POD, "9000")
    assert got["data"] == "", (got, mesh["agent_log"].read_text()[-3000:])
    m = metrics(mesh["node"])
    assert ('tulle_proxy_protocol_errors_total{listener="shop/pod-a|outbound",'
            'kind="destination_refused"} 1') in m, m
    assert "refused an outbound connection to 10.232.0.4:9000" in mesh["agent_log"].read_text()
    # The declared port keeps its mesh path: mTLS to api's inbound side, api's policy.
    assert client(mesh, "pod-a", "http", API_POD, "8080", "/declared")["status"] == 200
    assert client(mesh, "pod-b", "http", API_POD, "8080", "/declared")["status"] == 403
    # A sidecar's pod on another node closes an undeclared port itself (its inbound
    # listener has no chain for it): the agent relays that call as before, the server's
    # sidecar refuses it.  So only the agent's own pods needed the refusal.
    assert client(mesh, "pod-a", "refused", "10.231.0.3", "9000")["data"] == ""
    assert ('tulle_proxy_protocol_errors_total{listener="inbound",kind="no_filter_chain"} 1'
            in metrics(mesh["server"]))
    # Anything that is no mesh workload's address still passes through (ALLOW_ANY): an
    # application in the control plane's namespace, which is no workload of the mesh.
    log = mesh["workdir"] / "outside-app.log"
    with log.open("wb") as out:
        mesh["cp"].popen([sys.executable, str(mesh["workdir"] / "app.py"), "outside"],
                         stdout=out, stderr=out)
    net.wait_for("the outside app", lambda: net.listening(mesh["cp"], 8080), log)
    got = client(mesh, "pod-a", "http", mesh["cp"].address, "8080", "/outside")
    assert got["status"] == 200 and json.loads(got["body"])["name"] == "outside", got
