"""Transparent interception end to end, in network namespaces this test creates.

    [client ns 10.231.0.2]                                    [server ns 10.231.0.3]
      curl / python client (uid 0)                             :8080 HTTP, :9000 echo,
        │ `tulle iptables apply`: nat OUTPUT → 15001             :25 and :2525 greet first
        ▼
      tulle proxy (uid 1337, excluded from the redirect) ──────────────▶
                        (bridge in a namespace of its own)

The proxy is the real `tulle proxy run` process; the interception is the real `tulle iptables
apply` (outbound only here: no inbound or DNS redirect).  Its outbound connections are excluded
from the redirect by an owner match on its uid (Istio's convention: 1337).  Connections to 127.0.0.0/8
are not redirected, so dialling the proxy's port directly reaches it un-NATed: a loop.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.netns import require_tools, testbed  # noqa: F401
from tests.support.pods import as_user, as_user_env

from tulle.net.netns import Namespace, Testbed

pytestmark = pytest.mark.netns

PROXY_UID = 1337
PROXY_PORT = 15001
ADMIN_PORT = 15000
# The interpreter running the tests, with this checkout's sources (PYTHONPATH passes through
# `ip netns exec` and setpriv).
PYTHON = sys.executable
TULLE = [PYTHON, "-m", "tulle.cli.main"]

SERVER = r'''
import asyncio, json, sys

async def http(r, w):
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    body = json.dumps({"path": path, "headers": headers,
                       "peer_port": w.get_extra_info("peername")[1]}).encode()
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await w.drain()
    w.close()

async def echo(r, w):
    port = w.get_extra_info("peername")[1]
    while line := await r.readline():
        w.write(b"echo %d " % port + line)
        await w.drain()
    w.close()

async def greet(r, w):
    w.write(b"220 hello\r\n")
    await w.drain()
    await echo(r, w)

async def main():
    servers = [await asyncio.start_server(http, "0.0.0.0", 8080),
               await asyncio.start_server(echo, "0.0.0.0", 9000),
               await asyncio.start_server(greet, "0.0.0.0", 25),
               await asyncio.start_server(greet, "0.0.0.0", 2525)]
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

CLIENT = r'''
import json, socket, sys, time

def echo(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"ping\n")
        reply = s.makefile("rb").readline()
        return {"reply": reply.decode(), "local_port": s.getsockname()[1]}

def greeting(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        start = time.monotonic()
        first = s.makefile("rb").readline()
        return {"greeting": first.decode(), "waited": time.monotonic() - start}

def refused(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        return {"data": data.decode("latin-1")}

def keepalive(host, port):
    """One connection; a request per line on stdin (its path), each answer printed as JSON."""
    with socket.create_connection((host, port), timeout=10) as s:
        f = s.makefile("rb")
        for line in sys.stdin:
            s.sendall(b"GET %b HTTP/1.1\r\nHost: web\r\n\r\n" % line.strip().encode())
            status = int(f.readline().split()[1])
            headers = {}
            while (h := f.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            body = f.read(int(headers.get("content-length", "0")))
            print(json.dumps({"status": status, "body": body.decode("latin-1"),
                              "local_port": s.getsockname()[1]}), flush=True)
    return {"done": True}

what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(json.dumps({"echo": echo, "greeting": greeting, "refused": refused,
                  "keepalive": keepalive}[what](host, port)))
'''


def proxy_config(server_ip: str) -> dict[str, Any]:
    return {
        "admin": {"address": "127.0.0.1", "port": ADMIN_PORT},
        "listeners": [{
            "name": "outbound", "address": "0.0.0.0", "port": PROXY_PORT,
            "mode": "transparent", "protocol": "auto", "passthrough": True,
            "detect_timeout_ms": 300,
            "destinations": [
                {"address": server_ip, "port": 8080, "route_table": "web"},
                # Declared with protocol auto: sniffed, unless the port is opaque (25 is).
                {"address": server_ip, "port": 25, "cluster": "smtp"},
                {"address": server_ip, "port": 2525, "cluster": "greeter"},
            ],
        }],
        "route_tables": [{"name": "web", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "web"}]}]}]}],
        "clusters": [
            {"name": "web", "protocol": "http1", "endpoints": [{"address": server_ip, "port": 8080}]},
            {"name": "smtp", "protocol": "tcp", "endpoints": [{"address": server_ip, "port": 25}]},
            {"name": "greeter", "protocol": "tcp",
             "endpoints": [{"address": server_ip, "port": 2525}]},
        ],
    }


def redirect_outbound(ns: Namespace) -> None:
    """The sidecar's interception, inside the client namespace only."""
    ns.run([*TULLE, "iptables", "apply", "--proxy-uid", str(PROXY_UID),
            "--outbound-port", str(PROXY_PORT), "--inbound-ports", "", "--no-redirect-dns"])
    saved = ns.run(["iptables-save", "-t", "nat"]).stdout
    assert "-A OUTPUT -p tcp -j TULLE_OUTPUT" in saved


def wait_listening(ns: Namespace, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{log.read_text()}")
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout
        if out.strip():
            return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on {port} in {ns.name}:\n{log.read_text()}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Readable by the proxy's uid (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="tulle-e2e-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mesh(testbed: Testbed, workdir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    require_tools("iptables", "curl", "ss", "setpriv")
    client = testbed.node("10.231.0.2/24")
    server = testbed.node("10.231.0.3/24")
    (workdir / "server.py").write_text(SERVER)
    (workdir / "client.py").write_text(CLIENT)
    cfg = workdir / "proxy.json"
    cfg.write_text(json.dumps(proxy_config(server.address)))
    for f in workdir.iterdir():
        f.chmod(0o644)
    server_log = workdir / "server.log"
    with server_log.open("wb") as out:
        srv = server.popen([PYTHON, str(workdir / "server.py")], stdout=out, stderr=out)
    wait_listening(server, 2525, srv, server_log)
    redirect_outbound(client)
    proxy_log = workdir / "proxy.log"
    with proxy_log.open("wb") as out:
        proxy = client.popen(as_user(PROXY_UID, [
            "-m", "tulle.cli.main", "proxy", "run", "--config", str(cfg), "--watch-interval",
            "0"]), stdout=out, stderr=out, env=as_user_env(PROXY_UID))
    wait_listening(client, PROXY_PORT, proxy, proxy_log)
    try:
        yield {"client": client, "server": server, "workdir": workdir, "proxy": proxy,
               "proxy_log": proxy_log}
    finally:
        if proxy.poll() is None:
            proxy.terminate()
            try:
                proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(timeout=5)


def client_script(m: dict[str, Any], *args: str) -> dict[str, Any]:
    out = m["client"].run([PYTHON, str(m["workdir"] / "client.py"), *args], timeout=30)
    return json.loads(out.stdout)


def metrics(m: dict[str, Any]) -> str:
    out = m["client"].run(["curl", "-sS", "--max-time", "5",
                           f"http://127.0.0.1:{ADMIN_PORT}/metrics"])
    return out.stdout


def test_http_to_a_declared_destination_is_intercepted_and_routed(mesh: dict[str, Any]) -> None:
    out = mesh["client"].run(["curl", "-sS", "--max-time", "10", "http://10.231.0.3:8080/hello"])
    seen = json.loads(out.stdout)
    assert seen["path"] == "/hello"
    # Headers only the proxy adds: the request went through its HTTP path, not around it.
    assert seen["headers"]["x-forwarded-for"] == "10.231.0.2"
    assert len(seen["headers"]["x-request-id"]) == 36
    m = metrics(mesh)
    assert 'tulle_proxy_protocol_detected_total{listener="outbound",protocol="http1"} 1' in m
    assert 'tulle_proxy_requests_total{listener="outbound",cluster="web",response_code="200"' in m


def test_raw_tcp_to_an_undeclared_destination_passes_through(mesh: dict[str, Any]) -> None:
    got = client_script(mesh, "echo", "10.231.0.3", "9000")
    # The server saw a connection from another source port than the client's own: the proxy's.
    prefix, port, rest = got["reply"].split(" ", 2)
    assert (prefix, rest) == ("echo", "ping\n")
    assert int(port) != got["local_port"]
    m = metrics(mesh)
    assert ('tulle_proxy_tcp_connections_total{listener="outbound",cluster="PassthroughCluster"} 1'
            in m)


def test_server_first_protocols_are_not_stalled(mesh: dict[str, Any]) -> None:
    smtp = client_script(mesh, "greeting", "10.231.0.3", "25")
    assert smtp["greeting"] == "220 hello\r\n"
    other = client_script(mesh, "greeting", "10.231.0.3", "2525")
    assert other["greeting"] == "220 hello\r\n"
    assert other["waited"] >= 0.25  # the detect timeout (300 ms) had to run out first
    m = metrics(mesh)
    assert 'tulle_proxy_protocol_detected_total{listener="outbound",protocol="opaque"} 1' in m
    assert 'tulle_proxy_protocol_detected_total{listener="outbound",protocol="timeout"} 1' in m
    assert 'tulle_proxy_tcp_connections_total{listener="outbound",cluster="greeter"} 1' in m
    assert 'tulle_proxy_tcp_connections_total{listener="outbound",cluster="smtp"} 1' in m


def test_a_connection_straight_to_the_proxy_port_is_a_loop(mesh: dict[str, Any]) -> None:
    got = client_script(mesh, "refused", "127.0.0.1", str(PROXY_PORT))
    assert got["data"] == ""
    m = metrics(mesh)
    assert 'tulle_proxy_protocol_errors_total{listener="outbound",kind="loop"} 1' in m
    # Its own non-loopback address is redirected: relayed once, then refused on the second hop.
    assert client_script(mesh, "refused", "10.231.0.2", str(PROXY_PORT))["data"] == ""
    m = metrics(mesh)
    assert 'tulle_proxy_protocol_errors_total{listener="outbound",kind="loop"} 2' in m
    # The proxy is unharmed and still intercepting.
    assert mesh["proxy"].poll() is None
    assert client_script(mesh, "echo", "10.231.0.3", "9000")["reply"].endswith("ping\n")



def _reload(m: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Rewrite the config file, SIGHUP the proxy, wait until the new version is in force."""
    path = m["workdir"] / "proxy.json"
    path.write_text(json.dumps(cfg))
    path.chmod(0o644)
    m["proxy"].send_signal(signal.SIGHUP)
    for _ in range(200):
        out = m["client"].run(["curl", "-sS", "--max-time", "5",
                               f"http://127.0.0.1:{ADMIN_PORT}/config_dump"], check=False)
        if out.returncode == 0 and json.loads(out.stdout or "{}").get("version") == cfg["version"]:
            return
        time.sleep(0.05)
    pytest.fail(f"version {cfg['version']} never came into force:\n{m['proxy_log'].read_text()}")


def test_a_kept_alive_connection_keeps_its_destination_route_across_reloads(
        mesh: dict[str, Any]) -> None:
    """Issue 7 item 4: the next request on a kept-alive, per-destination-routed connection after
    a SIGHUP reload used to answer `503 no cluster named ''`."""
    server_ip = mesh["server"].address
    client = mesh["client"].popen(
        [PYTHON, str(mesh["workdir"] / "client.py"), "keepalive", server_ip, "8080"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None

    def ask(path: str) -> dict[str, Any]:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(path.encode() + b"\n")
        client.stdin.flush()
        return dict(json.loads(client.stdout.readline()))

    try:
        first = ask("/one")
        assert first["status"] == 200 and json.loads(first["body"])["path"] == "/one"

        # A reload that rebuilds the listener's context (a cluster added, nothing about 8080).
        cfg = proxy_config(server_ip)
        cfg["version"] = "v2"
        cfg["clusters"].append({"name": "spare", "protocol": "tcp",
                                "endpoints": [{"address": server_ip, "port": 9000}]})
        _reload(mesh, cfg)
        second = ask("/two")
        assert second["status"] == 200, second
        assert json.loads(second["body"])["path"] == "/two"

        # A reload that sends the destination's route table to another cluster: followed.
        cfg["version"] = "v3"
        cfg["clusters"].append({"name": "web-v2", "protocol": "http1",
                                "endpoints": [{"address": server_ip, "port": 8080}]})
        cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"] = [
            {"cluster": "web-v2"}]
        _reload(mesh, cfg)
        third = ask("/three")
        assert third["status"] == 200, third
        assert first["local_port"] == second["local_port"] == third["local_port"]
    finally:
        client.stdin.close()
        try:
            client.wait(timeout=10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(timeout=5)
    m = metrics(mesh)
    assert 'tulle_proxy_requests_total{listener="outbound",cluster="web",response_code="200"' in m
    assert ('tulle_proxy_requests_total{listener="outbound",cluster="web-v2",response_code="200"'
            in m)
    assert 'response_code="503"' not in m
    assert 'tulle_proxy_protocol_detected_total{listener="outbound",protocol="http1"} 1' in m
