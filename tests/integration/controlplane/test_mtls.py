"""Automatic mTLS end to end (ADR 0033): a real control plane compiles `Mesh.spec.mtls` and
`MutualTLSPolicy` into the snapshots of real proxies, which talk TLS 1.3 to each other on
127.0.0.1 with the SVIDs the control plane signed for them.

The server workload `api-0` (service account `api`, 127.0.0.2) runs a proxy in front of an
HTTP echo; client workloads (`a-0`, `b-0`: service accounts `a` and `b`) run proxies whose
outbound listener the test calls with `Host: api`.  mTLS is proved from both ends: the server's
listener counts the connection on its `mtls` chain, authorization sees the caller's SPIFFE ID,
and a plaintext client straight at the inbound port is closed under STRICT.  gRPC rides it with
ALPN `h2`; an opaque TCP port with ALPN `tulle-tcp` (the client there holds a certificate the
control plane signed, as a proxy's, and speaks TLS itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from tests.integration.controlplane.test_authorization import tcp_echo
from tests.integration.controlplane.test_cli_routing import get_json
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.integration.controlplane.test_routing import echo
from tests.support.cli import tulle
from tests.support.controlplane import (
    SubscribedProxy,
    apply,
    eventually,
    issue_token,
    running_control_plane,
    subscribe,
)
from tests.support.grpc_peers import running_grpc_server, who
from tests.support.proxy import free_port

from tulle.controlplane.main import ControlPlane
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.stream import Certificate, Hello, WorkloadInfo

V1 = "mesh.tulle.dev/v1alpha1"
POLICY = "policy.tulle.dev/v1alpha1"
NS = "shop"
SERVER_ADDR = "127.0.0.2"



ONLY_DBC = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
            "metadata": {"name": "only-dbc", "namespace": NS},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": "db"},
                     "rules": [{"from": [{"serviceAccounts": ["shop/dbc"]}]}]}}
"""Service db's opaque TCP port admits shop/dbc only (L4 authorization)."""


async def apply_db_and_its_client(api_url: str, inbound: int, origin: int) -> None:
    """db-0 (an opaque TCP port `inbound` in front of `origin`), Service db, the client
    workload dbc-0 and `ONLY_DBC`."""
    status, body = await apply(
        api_url,
        workload("db-0", "db", SERVER_ADDR, [{"name": "tcp-pg", "port": inbound,
                                              "targetPort": origin, "appProtocol": "tcp"}],
                 outbound=free_port(), app="db"),
        {"apiVersion": V1, "kind": "Service", "metadata": {"name": "db", "namespace": NS},
         "spec": {"selector": {"app": "db"}, "ports": [
             {"name": "pg", "port": 5432, "targetPort": "tcp-pg", "appProtocol": "tcp"}]}},
        workload("dbc-0", "dbc", "127.0.0.10", [], outbound=free_port(), app="dbc"),
        ONLY_DBC)
    assert status == 200, body


def workload(name: str, sa: str, address: str, ports: list[dict[str, Any]],
             outbound: int = 0, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": address, "serviceAccount": sa, "ports": ports}
    if outbound:
        spec["outboundPort"] = outbound
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": spec}


def mesh_doc(mode: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"},
            "spec": {"mtls": {"mode": mode}}}


def mtls_policy(name: str, mode: str, section: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"group": "", "kind": "Service", "name": "api"}
    if section:
        target["sectionName"] = section
    return {"apiVersion": POLICY, "kind": "MutualTLSPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"targetRef": target, "mode": mode}}


@dataclass
class Mesh:
    cp: ControlPlane
    server: SubscribedProxy
    inbound: int
    """The server's inbound port on SERVER_ADDR."""
    clients: dict[str, tuple[SubscribedProxy, int]] = field(default_factory=dict)
    """Service account -> its sidecar and outbound port."""

    async def call(self, sa: str = "a", path: str = "/") -> tuple[int, str]:
        """GET through the sidecar of the client with service account `sa`."""
        port = self.clients[sa][1]
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}{path}", headers={"Host": "api"}) as r:
            return r.status, await r.text()

    async def direct(self) -> bytes:
        """A plaintext HTTP/1.1 request straight at the server's inbound port (an outside
        client): the status line, or b"" when the proxy closed the connection."""
        try:
            r, w = await asyncio.open_connection(SERVER_ADDR, self.inbound)
        except OSError:
            return b""
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            await w.drain()
            return (await asyncio.wait_for(r.readline(), 5)).strip()
        except (ConnectionError, OSError):
            return b""
        finally:
            w.close()

    def server_metric(self, prefix: str) -> str:
        return "\n".join(line for line in
                         self.server.server.metrics.registry.render().splitlines()
                         if line.startswith(prefix))

    async def enforce(self, *docs: dict[str, Any]) -> None:
        status, body = await apply(self.cp.api_url, *docs)
        assert status == 200, body

    async def conditions(self, name: str) -> list[tuple[str, str, str]]:
        """The status conditions of MutualTLSPolicy `name` (what `tulle get -o json` shows)."""
        body = await get_json(self.cp.api_url, "mutualtlspolicies", name, NS)
        return [(c["type"], c["status"], c["reason"])
                for c in (body.get("status") or {}).get("conditions") or []]


async def _answers(m: Mesh, sa: str = "a", want: int = 200) -> bool:
    try:
        return (await m.call(sa))[0] == want
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def running_mesh(tmp_path: Path, *docs: dict[str, Any],
                       clients: tuple[str, ...] = ("a",),
                       server_sa: str = "api") -> AsyncIterator[Mesh]:
    """The control plane, `api-0` behind its proxy, and one sidecar per client service
    account; `docs` are applied first (a Mesh, policies)."""
    inbound = free_port()
    async with echo("api") as origin, running_control_plane() as cp:
        outbound = {sa: free_port() for sa in clients}
        resources = [
            workload("api-0", server_sa, SERVER_ADDR,
                     [{"name": "http", "port": inbound, "targetPort": origin}],
                     outbound=free_port(), app="api"),
            {"apiVersion": V1, "kind": "Service", "metadata": {"name": "api", "namespace": NS},
             "spec": {"selector": {"app": "api"},
                      "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
            *(workload(f"{sa}-0", sa, f"127.0.0.{10 + i}", [], outbound=outbound[sa],
                       app=f"client-{sa}") for i, sa in enumerate(clients)),
            *docs]
        status, body = await apply(cp.api_url, *resources)
        assert status == 200, body
        started: list[SubscribedProxy] = []
        try:
            server = await subscribe([cp.stream_port], WorkloadInfo(
                name="api-0", namespace=NS, address=SERVER_ADDR), cache_dir=tmp_path)
            started.append(server)
            m = Mesh(cp, server, inbound)
            for i, sa in enumerate(clients):
                p = await subscribe([cp.stream_port], WorkloadInfo(
                    name=f"{sa}-0", namespace=NS, address=f"127.0.0.{10 + i}"),
                    cache_dir=tmp_path)
                started.append(p)
                m.clients[sa] = (p, outbound[sa])
            yield m
        finally:
            for p in started:
                await p.stop()


async def test_the_default_mesh_is_strict_mtls_between_sidecars(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as m:
        await eventually(lambda: _answers(m), timeout=15)
        # the client's cluster originates mTLS expecting api's SPIFFE ID, ALPN http/1.1
        client_cfg = m.clients["a"][0].server.config
        assert client_cfg is not None
        (cluster,) = [c for c in client_cfg.clusters if c.name == "outbound|80||api.shop"]
        assert cluster.tls is not None
        assert cluster.tls.expected_spiffe_ids == ["spiffe://cluster.local/ns/shop/sa/api"]
        assert (cluster.tls.min_version, cluster.tls.alpn) == ("1.3", ["http/1.1"])
        # the server took it on its mTLS chain
        assert 'protocol="chain:mtls"' in m.server_metric("tulle_proxy_protocol_detected_total")
        # a plaintext client straight at the inbound port matches no chain and is closed
        assert await m.direct() == b""
        assert 'kind="no_filter_chain"' in m.server_metric("tulle_proxy_protocol_errors_total")
        # ... and the listener still serves the mesh
        assert (await m.call())[0] == 200
        # what the operator sees names the TLS settings, never key material
        code, out, err = await tulle(m.cp.api_url, "proxy-config", "api-0", "-n", NS,
                                     "-o", "json")
        assert code == 0, err
        assert '"identity": "workload"' in out and '"min_version": "1.3"' in out
        assert "PRIVATE KEY" not in out and "BEGIN CERTIFICATE" not in out


async def test_permissive_accepts_plaintext_and_sidecars_still_use_mtls(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, mesh_doc("PERMISSIVE")) as m:
        await eventually(lambda: _answers(m), timeout=15)
        assert await m.direct() == b"HTTP/1.1 200 OK"
        assert 'protocol="chain:plaintext"' in m.server_metric(
            "tulle_proxy_protocol_detected_total")
        assert 'protocol="chain:mtls"' in m.server_metric("tulle_proxy_protocol_detected_total")


async def test_disabled_is_plaintext_both_ways(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, mesh_doc("DISABLED")) as m:
        await eventually(lambda: _answers(m), timeout=15)
        assert await m.direct() == b"HTTP/1.1 200 OK"
        client_cfg = m.clients["a"][0].server.config
        server_cfg = m.server.server.config
        assert client_cfg is not None and server_cfg is not None
        assert all(c.tls is None for c in client_cfg.clusters)
        assert all(not lc.filter_chains for lc in server_cfg.listeners)


async def test_a_service_override_wins_over_the_mesh_and_a_port_one_over_both(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, mtls_policy("api-onboarding", "PERMISSIVE")) as m:
        await eventually(lambda: _answers(m), timeout=15)
        assert await m.direct() == b"HTTP/1.1 200 OK"  # the Service's PERMISSIVE wins
        await eventually(lambda: _accepted(m, "api-onboarding"), timeout=10)
        code, out, err = await tulle(m.cp.api_url, "get", "mutualtlspolicies", "-n", NS)
        assert code == 0, err
        header, row = (line.split() for line in out.strip().splitlines())
        cols = dict(zip(header, row, strict=False))
        assert (cols["NAME"], cols["ACCEPTED"]) == ("api-onboarding", "True"), out
        code, out, err = await tulle(m.cp.api_url, "describe", "mtls", "api-onboarding",
                                     "-n", NS)
        assert code == 0, err
        assert "mode PERMISSIVE in force for 1 Service port(s)" in out, out
        # a policy on the port itself wins over the Service's: back to STRICT there
        await m.enforce(mtls_policy("api-http-strict", "STRICT", section="http"))
        await eventually(lambda: _closed(m), timeout=15)
        assert (await m.call())[0] == 200  # the sidecar still gets in


async def _accepted(m: Mesh, name: str) -> bool:
    return await m.conditions(name) == [("Accepted", "True", "Applied")]


async def _closed(m: Mesh) -> bool:
    return await m.direct() == b""


async def test_a_server_with_another_identity_is_refused_by_the_client(tmp_path: Path) -> None:
    """`api-0` is declared with service account `api`, but the proxy answering on its address
    holds a certificate for `evil` (an impostor workload on the same address): the client's
    sidecar refuses the handshake's SPIFFE ID, 503 UF naming it, nothing reaches the origin."""
    inbound = free_port()
    async with echo("evil") as origin, running_control_plane() as cp:
        a_out = free_port()
        status, body = await apply(
            cp.api_url,
            workload("api-0", "api", SERVER_ADDR, [{"name": "http", "port": inbound}],
                     app="api"),
            workload("evil-0", "evil", SERVER_ADDR,
                     [{"name": "http", "port": inbound, "targetPort": origin}],
                     outbound=free_port(), app="evil"),
            {"apiVersion": V1, "kind": "Service", "metadata": {"name": "api", "namespace": NS},
             "spec": {"selector": {"app": "api"},
                      "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
            workload("a-0", "a", "127.0.0.10", [], outbound=a_out, app="client-a"))
        assert status == 200, body
        evil = await subscribe([cp.stream_port], WorkloadInfo(
            name="evil-0", namespace=NS, address=SERVER_ADDR), cache_dir=tmp_path)
        client = await subscribe([cp.stream_port], WorkloadInfo(
            name="a-0", namespace=NS, address="127.0.0.10"), cache_dir=tmp_path)
        try:
            async def refused() -> bool:
                try:
                    async with aiohttp.ClientSession() as s, s.get(
                            f"http://127.0.0.1:{a_out}/", headers={"Host": "api"}) as r:
                        return r.status == 503 and "sa/evil" in await r.text()
                except aiohttp.ClientError:
                    return False

            await eventually(refused, timeout=15)
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{a_out}/", headers={"Host": "api"}) as r:
                text = await r.text()
                assert r.status == 503
            assert ("TLS: server identity spiffe://cluster.local/ns/shop/sa/evil is not one "
                    "expected for the destination") in text
            assert "PRIVATE KEY" not in text
            metrics = client.server.metrics.registry.render().splitlines()
            rejected = [line for line in metrics if line.startswith(
                'tulle_proxy_upstream_peer_identity_rejected_total{cluster="outbound|80||api')]
            assert rejected and not rejected[0].endswith(" 0")
            assert any(line.startswith("tulle_proxy_requests_total{") and
                       'response_flags="UF"' in line and "outbound|80||api.shop" in line
                       for line in metrics)
        finally:
            await client.stop()
            await evil.stop()


@pytest.mark.parametrize("source", [
    {"identities": ["spiffe://cluster.local/ns/shop/sa/a"]},
    {"workloadLabels": {"app": "client-a"}},  # resolved to a's service account
], ids=["identity", "workload-labels"])
async def test_authorization_sees_the_callers_spiffe_id(tmp_path: Path,
                                                        source: dict[str, Any]) -> None:
    """Issue 9 item 5 through real sidecars: only `a` may call api; `b` gets 403 naming the
    policy.  The identity is the one in the caller's certificate, nothing it says; a source by
    workload labels is resolved to the service accounts of the workloads it selects."""
    allow_a = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
               "metadata": {"name": "only-a", "namespace": NS},
               "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                        "rules": [{"from": [source]}]}}
    async with running_mesh(tmp_path, allow_a, clients=("a", "b")) as m:
        await eventually(lambda: _answers(m, "a"), timeout=15)
        await eventually(lambda: _answers(m, "b", 403), timeout=15)
        assert (await m.call("a"))[0] == 200
        assert await m.call("b") == (
            403, "RBAC: access denied: no ALLOW policy matched (shop/only-a)\n")
        decisions = m.server_metric("tulle_proxy_authz_decisions_total{")
        assert 'policy="shop/only-a",action="ALLOW",result="allow"' in decisions
        assert 'policy="shop/only-a",action="ALLOW",result="deny"' in decisions


async def test_grpc_rides_mtls_with_alpn_h2(tmp_path: Path) -> None:
    """A gRPC Service port (appProtocol grpc): the client's cluster offers ALPN `h2` only, the
    server's mTLS chain speaks HTTP/2, calls go through."""
    inbound, out = free_port(), free_port()
    with running_grpc_server("greeter") as origin:
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url,
                workload("greeter-0", "greeter", SERVER_ADDR,
                         [{"name": "grpc", "port": inbound, "targetPort": origin,
                           "appProtocol": "grpc"}], outbound=free_port(), app="greeter"),
                {"apiVersion": V1, "kind": "Service",
                 "metadata": {"name": "greeter", "namespace": NS},
                 "spec": {"selector": {"app": "greeter"}, "ports": [
                     {"name": "grpc", "port": 80, "targetPort": "grpc", "appProtocol": "grpc"}]}},
                workload("a-0", "a", "127.0.0.10", [], outbound=out, app="client-a"))
            assert status == 200, body
            started = [await subscribe([cp.stream_port], WorkloadInfo(
                name=n, namespace=NS, address=a), cache_dir=tmp_path)
                for n, a in (("greeter-0", SERVER_ADDR), ("a-0", "127.0.0.10"))]
            try:
                with grpc.insecure_channel(f"127.0.0.1:{out}", options=[
                        ("grpc.default_authority", "greeter")]) as ch:
                    async def called() -> bool:
                        try:
                            return await asyncio.to_thread(who, ch, timeout=2) == "greeter"
                        except grpc.RpcError:
                            return False

                    await eventually(called, timeout=15)
                client_cfg = started[1].server.config
                assert client_cfg is not None
                (cluster,) = [c for c in client_cfg.clusters
                              if c.name == "outbound|80||greeter.shop"]
                assert cluster.protocol == "http2" and cluster.tls is not None
                assert cluster.tls.alpn == ["h2"]
                server_metrics = started[0].server.metrics.registry.render()
                assert 'protocol="chain:mtls"' in server_metrics
            finally:
                for p in started:
                    await p.stop()


async def test_an_opaque_tcp_port_is_mtls_with_alpn_tulle_tcp(tmp_path: Path) -> None:
    """A `tcp` workload port under STRICT: a client holding a certificate the control plane
    signed (admitted over the stream like a proxy) gets relayed over TLS 1.3 with ALPN
    `tulle-tcp`, an L4 authorization policy sees its SPIFFE ID; plaintext is closed."""
    inbound = free_port()
    async with tcp_echo() as origin, running_control_plane() as cp:
        await apply_db_and_its_client(cp.api_url, inbound, origin)
        server = await subscribe([cp.stream_port], WorkloadInfo(
            name="db-0", namespace=NS, address=SERVER_ADDR), cache_dir=tmp_path)
        # A client's SVID, signed by the control plane's CA as a proxy's would be.
        key = WorkloadKey()
        who_ = WorkloadInfo(name="dbc-0", namespace=NS, address="127.0.0.10")
        raw = await RawProxy.connect(cp.stream_port, Hello(
            workload=who_, token=await issue_token(cp.api_url, who_),
            csr=key.csr(NS, "dbc-0")))
        try:
            cert = await raw.next()
            assert isinstance(cert, Certificate), cert
            (tmp_path / "dbc.pem").write_text(cert.cert_chain)
            (tmp_path / "dbc.key").write_text(key.pem())
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_verify_locations(cadata="".join(cert.trust_bundle))
            ctx.load_cert_chain(tmp_path / "dbc.pem", tmp_path / "dbc.key")
            ctx.set_alpn_protocols(["tulle-tcp"])

            async def echoed() -> bytes:
                try:
                    r, w = await asyncio.open_connection(SERVER_ADDR, inbound, ssl=ctx)
                except (OSError, ssl.SSLError):
                    return b""
                try:
                    ssl_obj = w.get_extra_info("ssl_object")
                    assert ssl_obj.selected_alpn_protocol() == "tulle-tcp"
                    assert ssl_obj.version() == "TLSv1.3"
                    w.write(b"ping")
                    await w.drain()
                    return await asyncio.wait_for(r.read(4), 5)
                except (ConnectionError, OSError):
                    return b""
                finally:
                    w.close()

            await eventually(lambda: _is(echoed(), b"ping"), timeout=15)
            decisions = "\n".join(
                line for line in server.server.metrics.registry.render().splitlines()
                if line.startswith("tulle_proxy_authz_decisions_total{"))
            assert 'policy="shop/only-dbc",action="ALLOW",result="allow"' in decisions
            # plaintext on the same port matches no chain: closed, nothing relayed
            r, w = await asyncio.open_connection(SERVER_ADDR, inbound)
            w.write(b"ping")
            try:
                assert await asyncio.wait_for(r.read(4), 5) == b""
            except ConnectionError:
                pass
            finally:
                w.close()
            assert await echoed() == b"ping"  # and the listener still serves
        finally:
            raw.close()
            await server.stop()


async def _is(got: Any, want: bytes) -> bool:
    return bool(await got == want)


pytestmark = pytest.mark.timeout(60)


async def test_a_trust_domain_moved_with_an_alias_keeps_every_call_working(
        tmp_path: Path) -> None:
    """The audit's outage: a new trustDomain made clients expect it at once while the servers'
    certificates still named the old one (503 on every call until renewal).  With the old one
    kept in trustDomainAliases the calls go on; without it, apply warns (ADR 0087)."""
    async with running_mesh(tmp_path) as m:
        await eventually(lambda: _answers(m), timeout=15)
        moved = {"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"},
                 "spec": {"trustDomain": "example.org", "trustDomainAliases": ["cluster.local"]}}
        await m.enforce(moved)

        def expects_both() -> bool:
            cfg = m.clients["a"][0].server.config
            tls = next((c.tls for c in (cfg.clusters if cfg else [])
                        if c.name == "outbound|80||api.shop"), None)
            return tls is not None and "spiffe://example.org/ns/shop/sa/api" in \
                tls.expected_spiffe_ids
        await eventually(expects_both, timeout=15)
        for _ in range(5):  # the server's certificate still names cluster.local
            assert (await m.call())[0] == 200
        # Without the alias the same move fails every call: the certificates did not follow.
        await m.enforce({**moved, "spec": {"trustDomain": "example.org"}})
        await eventually(lambda: _answers(m, want=503), timeout=15)
