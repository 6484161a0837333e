"""AuthorizationPolicy end to end: resources over the REST API, compiled by the control plane,
enforced by a real proxy on its workload's inbound side (HTTP, gRPC and opaque TCP ports).

The server workload `api-0` runs a proxy subscribed to the control plane; its ports forward to
real origins on loopback (an HTTP echo, a gRPC server, a TCP echo).  Callers connect to the
proxy's inbound listeners directly, from 127.0.0.1 or (to test source CIDRs) 127.0.0.2.
Those callers are outside the mesh (no sidecar), so the Mesh here is PERMISSIVE (STRICT, the
default, would close them).  Identity rules need mTLS: they are tested through real sidecars in
tests/integration/controlplane/test_mtls.py, and at unit level with the peer identity set
(tests/unit/dataplane/filters/test_authz.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from tests.integration.controlplane.test_routing import echo
from tests.support.controlplane import apply, eventually, running_control_plane, subscribe
from tests.support.grpc_peers import running_grpc_server, who
from tests.support.proxy import free_port
from tests.support.resources import permissive_mesh

from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.stream import WorkloadInfo

V1 = "mesh.tulle.dev/v1alpha1"
POLICY = "policy.tulle.dev/v1alpha1"


def policy(name: str, spec: dict[str, Any], ns: str = "shop") -> dict[str, Any]:
    target = spec.pop("target", {"group": "", "kind": "Service", "name": "api"})
    return {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": {"targetRef": target, **spec}}


MESH_TARGET = {"group": "mesh.tulle.dev", "kind": "Mesh", "name": "default"}


@contextlib.asynccontextmanager
async def tcp_echo() -> AsyncIterator[int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        await srv.wait_closed()


@dataclass
class Mesh:
    api: str
    server: ProxyServer
    http: int
    tcp: int
    grpc: int
    session: aiohttp.ClientSession

    async def get(self, path: str, method: str = "GET", source: str = "127.0.0.1") -> tuple[int, str]:
        conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with aiohttp.ClientSession(connector=conn) as s, s.request(
                method, f"http://127.0.0.1:{self.http}{path}", headers={"Host": "api"}) as r:
            return r.status, await r.text()

    async def tcp_roundtrip(self, source: str = "127.0.0.1") -> bytes:
        """What the TCP echo sends back through the proxy (b"" when the proxy closed it)."""
        try:
            r, w = await asyncio.open_connection("127.0.0.1", self.tcp, local_addr=(source, 0))
        except OSError:
            return b""
        try:
            w.write(b"ping")
            await w.drain()
            return await asyncio.wait_for(r.read(4), 5)
        except (ConnectionError, OSError):
            return b""
        finally:
            w.close()

    async def grpc_code(self) -> grpc.StatusCode:
        def call() -> grpc.StatusCode:
            with grpc.insecure_channel(f"127.0.0.1:{self.grpc}") as ch:
                try:
                    who(ch, timeout=5)
                except grpc.RpcError as exc:
                    return exc.code()  # type: ignore[no-any-return]
                return grpc.StatusCode.OK
        return await asyncio.to_thread(call)

    def decisions(self) -> str:
        return "\n".join(line for line in self.server.metrics.registry.render().splitlines()
                         if line.startswith("tulle_proxy_authz_decisions_total{"))

    async def enforce(self, *docs: dict[str, Any]) -> None:
        status, body = await apply(self.api, *docs)
        assert status == 200, body


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    ports = {"http": free_port(), "tcp": free_port(), "grpc": free_port()}
    with running_grpc_server("api") as grpc_port:
        async with echo("api") as http_port, tcp_echo() as tcp_port, \
                running_control_plane() as cp:
            workload = {"apiVersion": V1, "kind": "Workload",
                        "metadata": {"name": "api-0", "namespace": "shop",
                                     "labels": {"app": "api"}},
                        "spec": {"address": "127.0.0.1", "ports": [
                            {"name": "http", "port": ports["http"], "targetPort": http_port},
                            {"name": "tcp-db", "port": ports["tcp"], "targetPort": tcp_port},
                            {"name": "grpc", "port": ports["grpc"], "targetPort": grpc_port}]}}
            svc = {"apiVersion": V1, "kind": "Service",
                   "metadata": {"name": "api", "namespace": "shop"},
                   "spec": {"selector": {"app": "api"}, "ports": [
                       {"name": "http", "port": 80, "targetPort": "http"}]}}
            status, body = await apply(cp.api_url, workload, svc, permissive_mesh())
            assert status == 200, body
            proxy = await subscribe([cp.stream_port], WorkloadInfo(
                name="api-0", namespace="shop", address="127.0.0.1"), cache_dir=tmp_path)
            try:
                async with aiohttp.ClientSession() as session:
                    m = Mesh(cp.api_url, proxy.server, ports["http"], ports["tcp"],
                             ports["grpc"], session)
                    await eventually(lambda: _ok(m), timeout=10)
                    yield m
            finally:
                await proxy.stop()


async def _ok(m: Mesh) -> bool:
    try:
        return (await m.get("/"))[0] == 200
    except aiohttp.ClientError:
        return False


async def test_a_mesh_wide_deny_all_refuses_http_grpc_and_tcp(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        assert await m.tcp_roundtrip() == b"ping"
        assert await m.grpc_code() == grpc.StatusCode.OK
        await m.enforce(policy("deny-all", {"target": MESH_TARGET}, ns="mesh-system"))
        await eventually(lambda: _status(m, "/"), timeout=10)
        status, body = await m.get("/anything")
        assert status == 403
        assert body == "RBAC: access denied: no ALLOW policy matched (mesh-system/deny-all)\n"
        assert await m.grpc_code() == grpc.StatusCode.PERMISSION_DENIED
        assert await m.tcp_roundtrip() == b""  # closed before anything was relayed
        text = m.decisions()
        assert 'policy="mesh-system/deny-all",action="ALLOW",result="deny"' in text
        # the listener stays up: lifting the policy lets traffic through again
        await m.enforce(policy("deny-all", {"target": MESH_TARGET, "rules": [{}]},
                               ns="mesh-system"))
        await eventually(lambda: _ok(m), timeout=10)
        assert await m.tcp_roundtrip() == b"ping"


async def _status(m: Mesh, path: str, want: int = 403) -> bool:
    return (await m.get(path))[0] == want


async def test_allow_by_path_and_method_deny_beats_allow_and_source_cidrs(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        await m.enforce(
            policy("read-api", {"rules": [{"to": [{"methods": ["GET"], "paths": ["/api/*"]}]}]}),
            policy("no-admin", {"action": "DENY",
                                "rules": [{"to": [{"paths": ["/api/admin*"]}]}]}),
            policy("not-from-2", {"action": "DENY",
                                  "rules": [{"from": [{"ipBlocks": ["127.0.0.2/32"]}]}]}))
        await eventually(lambda: _status(m, "/"), timeout=10)
        assert (await m.get("/api/items"))[0] == 200
        assert (await m.get("/api/items", method="POST"))[0] == 403
        assert await m.get("/api/admin/users") == (
            403, "RBAC: access denied by DENY policy shop/no-admin\n")
        assert await m.get("/api/items", source="127.0.0.2") == (
            403, "RBAC: access denied by DENY policy shop/not-from-2\n")
        # the TCP port: no rule for it matches at L4 (HTTP fields), so the ALLOW denies
        assert await m.tcp_roundtrip() == b""
        text = m.decisions()
        assert 'policy="shop/read-api",action="ALLOW",result="allow"' in text
        assert 'policy="shop/no-admin",action="DENY",result="deny"' in text


async def test_a_deny_written_in_the_ipv4_mapped_form_refuses_that_ipv4_client(
        tmp_path: Path) -> None:
    """`::ffff:127.0.0.2/128` names the IPv4 client 127.0.0.2 (peers are compared as IPv4,
    also when a dual-stack socket reports them mapped); such a DENY once matched no one."""
    async with mesh(tmp_path) as m:
        await m.enforce(
            policy("all", {"rules": [{}]}),
            policy("not-from-2", {"action": "DENY",
                                  "rules": [{"from": [{"ipBlocks": ["::ffff:127.0.0.2/128"]}]}]}))
        await eventually(lambda: _denied_from(m, "127.0.0.2"), timeout=10)
        assert await m.get("/api/items", source="127.0.0.2") == (
            403, "RBAC: access denied by DENY policy shop/not-from-2\n")
        assert (await m.get("/api/items"))[0] == 200


async def _denied_from(m: Mesh, source: str) -> bool:
    return (await m.get("/", source=source))[0] == 403


async def raw_status(port: int, target: bytes) -> bytes:
    """The status line for a request target sent as is (no client-side normalisation)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(b"GET " + target + b" HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        return (await asyncio.wait_for(r.readline(), 5)).strip()
    finally:
        w.close()


async def test_a_deny_rule_cannot_be_dodged_by_path_tricks(tmp_path: Path) -> None:
    """Attack: reach a denied path through dot segments or percent-encoding.  The proxy
    normalises the path before routing, and authz runs on the normalised path."""
    async with mesh(tmp_path) as m:
        await m.enforce(policy("no-admin", {"action": "DENY",
                                            "rules": [{"to": [{"paths": ["/admin*"]}]}]}))
        await eventually(lambda: _status(m, "/admin"), timeout=10)
        for target in (b"/x/../admin", b"/./admin/users", b"/%61dmin", b"//admin",
                       b"/x/%2e%2e/admin"):
            status = await raw_status(m.http, target)
            assert status.split(b" ")[1] in (b"403", b"400"), (target, status)
        assert (await raw_status(m.http, b"/public")).split(b" ")[1] == b"200"


async def test_audit_and_dry_run_pass_but_are_counted(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        await m.enforce(
            policy("would-block", {"action": "DENY", "dryRun": True,
                                   "rules": [{"to": [{"paths": ["/api/*"]}]}]}),
            policy("watch", {"action": "AUDIT", "rules": [{"to": [{"methods": ["GET"]}]}]}))
        await eventually(lambda: _counted(m, "/api/x", "dry_run_deny"), timeout=10)
        assert (await m.get("/api/x"))[0] == 200
        text = m.decisions()
        assert 'policy="shop/would-block",action="DENY",result="dry_run_deny"' in text
        assert 'policy="shop/watch",action="AUDIT",result="audit"' in text
        assert await m.tcp_roundtrip() == b"ping"  # DENY dry run at L4: counted, relayed


async def _counted(m: Mesh, path: str, result: str) -> bool:
    status, _ = await m.get(path)
    return status == 200 and f'result="{result}"' in m.decisions()


async def test_tcp_port_admits_by_source_cidr_and_closes_the_rest(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        await m.enforce(policy("db-clients", {
            "rules": [{"from": [{"ipBlocks": ["127.0.0.1/32"]}]}]}))
        await eventually(lambda: _tcp_closed(m, "127.0.0.2"), timeout=10)
        assert await m.tcp_roundtrip("127.0.0.1") == b"ping"
        assert (await m.get("/"))[0] == 200
        assert (await m.get("/", source="127.0.0.2"))[0] == 403
        assert (f'listener="inbound|{m.tcp}",policy="shop/db-clients",action="ALLOW",'
                'result="deny"') in m.decisions()


async def _tcp_closed(m: Mesh, source: str) -> bool:
    return await m.tcp_roundtrip(source) == b""


pytestmark = pytest.mark.timeout(60)
