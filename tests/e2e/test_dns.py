"""Mesh DNS end to end, in network namespaces this test creates: an unmodified client's
resolver (glibc `getent`, Python's `getaddrinfo`, dnspython over TCP) asks its usual
nameserver, iptables redirects port 53 to the proxy's resolver, and mesh names come back with
the Services' virtual IPs while other names come from a real upstream in another namespace.

    [pod ns 10.232.0.2]                                   [dns ns 10.232.0.3]
      getent / python (uid 0), asks <resolv.conf ns>:53     upstream DNS :53 (UDP, TCP)
        │ iptables -t nat OUTPUT -p udp/tcp --dport 53 REDIRECT --to-ports 15053
        ▼
      tulle proxy run (uid 1337, excluded) :15053 ──────── forwards ───────▶
                        (bridge in a namespace of its own)

The redirect is `tulle iptables apply`'s, DNS only.  The pod's
nameserver is whatever the host's resolv.conf names: a default route through the bridge makes
it routable inside the pod, and the redirect takes every query before it could leave.
"""

from __future__ import annotations

import json
import os
import shutil
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
DNS_PORT = 15053
ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")

UPSTREAM = r'''
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from tests.support.dnsupstream import Upstream, _Udp, _tcp

async def main():
    up = Upstream()
    loop = asyncio.get_running_loop()
    await asyncio.start_server(lambda r, w: _tcp(up, r, w), "0.0.0.0", 53)
    await loop.create_datagram_endpoint(lambda: _Udp(up), local_addr=("0.0.0.0", 53))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

CLIENT = r'''
import json, socket, sys
import dns.message, dns.query
what, name = sys.argv[1], sys.argv[2]
if what == "getaddrinfo":
    try:
        out = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as exc:
        out = [f"error {exc.errno}"]
elif what == "tcp":  # dnspython over TCP to the pod's own nameserver (redirected)
    server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
    r = dns.query.tcp(dns.message.make_query(name, "A"), server, timeout=5)
    out = [x.address for rrset in r.answer for x in rrset]
print(json.dumps(out))
'''


def redirect_dns(ns: Namespace) -> None:
    """`tulle iptables apply` with the DNS redirect alone (no TCP interception: the test is
    about the resolver, the rules are tests/e2e/test_iptables.py's)."""
    ns.run([sys.executable, "-m", "tulle.cli.main", "iptables", "apply", "--no-ipv6",
            "--proxy-uid", str(PROXY_UID), "--dns-port", str(DNS_PORT),
            "--outbound-cidrs", "", "--inbound-ports", ""],
           env={**os.environ, "PYTHONPATH": SRC})


def wait_for(ns: Namespace, args: list[str], proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(200):  # bounded: 10 s
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{log.read_text()}")
        if ns.run(args, check=False).stdout.strip():
            return
        time.sleep(0.05)
    pytest.fail(f"{args} never true in {ns.name}:\n{log.read_text()}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tulle-e2e-dns-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pod(workdir: Path) -> Iterator[dict[str, Any]]:
    require_tools("iptables", "ss", "setpriv", "getent")
    tb = Testbed(subnet="10.232.0.0/24")
    try:
        client = tb.node("10.232.0.2/24")
        upstream = tb.node("10.232.0.3/24")
        client.ip("route", "add", "default", "dev", "eth0")
        (workdir / "upstream.py").write_text(UPSTREAM)
        (workdir / "client.py").write_text(CLIENT)
        (workdir / "proxy.json").write_text(json.dumps({
            "admin": {"port": 0},
            "node": {"namespace": "shop"},
            "dns": {"port": DNS_PORT, "upstreams": [upstream.address],
                    "hosts": [{"service": "catalog", "namespace": "shop",
                               "addresses": ["10.96.0.7", "fd00::7"]},
                              {"service": "web", "namespace": "front",
                               "addresses": ["10.96.0.9"]}]}}))
        for f in workdir.iterdir():
            f.chmod(0o644)
        env = {**os.environ, "PYTHONPATH": SRC}
        up_log = workdir / "upstream.log"
        with up_log.open("wb") as out:
            up = upstream.popen([sys.executable, str(workdir / "upstream.py"), str(ROOT)],
                                stdout=out, stderr=out, env=env)
        wait_for(upstream, ["ss", "-Hlun", "sport = :53"], up, up_log)
        redirect_dns(client)
        log = workdir / "proxy.log"
        with log.open("wb") as out:
            proxy = client.popen(as_user(PROXY_UID, [
                "-c", "from tulle.cli.main import main; main()", "proxy", "run", "--config",
                str(workdir / "proxy.json"), "--watch-interval", "0"]),
                stdout=out, stderr=out, env=as_user_env(PROXY_UID, env))
        wait_for(client, ["ss", "-Hlun", f"sport = :{DNS_PORT}"], proxy, log)
        yield {"client": client, "workdir": workdir, "proxy": proxy, "log": log}
    finally:
        tb.close()


def ask(p: dict[str, Any], *args: str) -> Any:
    out = p["client"].run([sys.executable, str(p["workdir"] / "client.py"), *args], timeout=30,
                          env={**os.environ, "PYTHONPATH": SRC})
    return json.loads(out.stdout)


def test_an_unmodified_client_resolves_mesh_names_and_other_names(pod: dict[str, Any]) -> None:
    c: Namespace = pod["client"]
    out = c.run(["getent", "ahostsv4", "catalog.shop.svc.cluster.local"]).stdout
    assert "10.96.0.7" in out
    out = c.run(["getent", "ahostsv6", "catalog"]).stdout  # the pod's own namespace
    assert "fd00::7" in out
    assert ask(pod, "getaddrinfo", "web.front") == ["10.96.0.9"]
    assert ask(pod, "getaddrinfo", "example.org") == ["192.0.2.7"]  # forwarded upstream
    assert ask(pod, "tcp", "CATALOG.shop.mesh") == ["10.96.0.7"]
    missing = c.run(["getent", "hosts", "nothing.shop.mesh"], check=False)
    assert missing.returncode == 2  # not found (NXDOMAIN), not a timeout
    assert pod["proxy"].poll() is None, pod["log"].read_text()


def test_the_namespaces_are_gone_after_the_test(pod: dict[str, Any]) -> None:
    name = pod["client"].name
    assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                  check=True).stdout
    pod["client"].testbed.close()
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                      check=True).stdout
