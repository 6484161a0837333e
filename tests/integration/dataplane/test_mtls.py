"""Mesh mTLS between two real proxies on 127.0.0.1 (ADR 0030).

A client proxy (outbound listener -> cluster with mTLS and expected SPIFFE IDs) talks to a
server proxy (inbound listener with an mTLS filter chain, optionally a plaintext one) that
forwards to a local origin.  Everything is real: sockets, TLS 1.3 handshakes, certificates
made by `tests.support.ca`.  Each attack in issue 9's list that falls on the data plane is one
test here, and each checks that the listener still serves afterwards and that no key material
shows up in what the proxy says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from tests.support.ca import TestCA
from tests.support.controlplane import named_origin
from tests.support.proxy import RunningProxy, running_proxy

from tulle.dataplane.tlsread import TLSReader

pytestmark = pytest.mark.both_loops

SERVER_ID = "spiffe://mesh.local/ns/default/sa/server"
CLIENT_ID = "spiffe://mesh.local/ns/default/sa/client"
MTLS = {"identity": "workload", "trust_bundle": "mesh", "min_version": "1.3"}


@asynccontextmanager
async def greeting_server() -> AsyncIterator[int]:
    """A server-first TCP service: says `hello\\n` on connect, then echoes upper-cased."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        try:
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def server_config(ca: TestCA, app: int, tcp_app: int, *, permissive: bool = False,
                  identity: dict[str, str] | None = None) -> dict[str, Any]:
    chains: list[dict[str, Any]] = [
        {"name": "mtls", "match": {"transport": "tls"}, "tls": MTLS, "route_table": "local"},
        {"name": "mtls-tcp", "match": {"transport": "tls", "alpn": ["tulle-tcp"]},
         "protocol": "tcp", "tls": MTLS, "cluster": "local-tcp",
         "network_filters": [{"type": "flow_log", "logger": "test.mtls.flow"}]},
    ]
    if permissive:
        chains.append({"name": "plain", "match": {"transport": "plaintext"},
                       "route_table": "local"})
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "in", "port": 0, "direction": "inbound",
                       "filter_chains": chains}],
        "route_tables": [{"name": "local", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "app"}]}]}]}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app}]},
                     {"name": "local-tcp", "protocol": "tcp",
                      "endpoints": [{"address": "127.0.0.1", "port": tcp_app}]}],
        "identities": [identity or ca.identity("workload", SERVER_ID)],
        "trust_bundles": [ca.bundle("mesh")],
    }


def client_config(ca: TestCA, server_port: int, *, protocol: str = "http1",
                  expected: tuple[str, ...] = (SERVER_ID,),
                  identity: dict[str, str] | None = None) -> dict[str, Any]:
    tls = {**MTLS, "expected_spiffe_ids": list(expected)}
    ep = [{"address": "127.0.0.1", "port": server_port}]
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "out", "port": 0, "route_table": "rt"},
                      {"name": "tcp-out", "port": 0, "protocol": "tcp", "cluster": "mesh-tcp"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "mesh"}]}]}]}],
        "clusters": [{"name": "mesh", "protocol": protocol, "endpoints": ep, "tls": tls},
                     {"name": "mesh-tcp", "protocol": "tcp", "endpoints": ep, "tls": tls}],
        "identities": [identity or ca.identity("workload", CLIENT_ID)],
        "trust_bundles": [ca.bundle("mesh")],
    }


@asynccontextmanager
async def mesh(ca: TestCA, *, permissive: bool = False, protocol: str = "http1",
               server_identity: dict[str, str] | None = None,
               client_identity: dict[str, str] | None = None,
               expected: tuple[str, ...] = (SERVER_ID,),
               ) -> AsyncIterator[tuple[RunningProxy, RunningProxy, int]]:
    """(client proxy, server proxy, origin port)."""
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(named_origin("app"))
        tcp_app = await stack.enter_async_context(greeting_server())
        server = await stack.enter_async_context(running_proxy(server_config(
            ca, app, tcp_app, permissive=permissive, identity=server_identity)))
        client = await stack.enter_async_context(running_proxy(client_config(
            ca, server.port("in"), protocol=protocol, expected=expected,
            identity=client_identity)))
        yield client, server, app


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def peer_identities(server: RunningProxy) -> list[str]:
    """`ConnectionFacts.peer_identity` of the HTTP connections open on the server's listener."""
    handle = server.server.listeners["in"]
    return sorted(c.facts.peer_identity for c in handle.connections if hasattr(c, "facts"))


def mtls_client(ca: TestCA, spiffe_id: str, **kw: Any) -> ssl.SSLContext:
    """A direct TLS client presenting an SVID (from `ca`), trusting `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.pem)
    if spiffe_id:
        cert, key = ca.svid(spiffe_id, **kw)
        import os
        fds = []
        for data in (cert, key):
            fd = os.memfd_create("t")
            os.write(fd, data.encode())
            fds.append(fd)
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        for fd in fds:
            os.close(fd)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def raw_tls_request(port: int, ctx: ssl.SSLContext) -> bytes:
    """One HTTP/1.1 request over TLS straight to the server proxy; what came back (b"" when
    the connection was closed or reset)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 10)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


def no_key_material(*texts: str) -> None:
    for t in texts:
        assert "PRIVATE KEY" not in t and "BEGIN CERTIFICATE" not in t


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_two_hops_over_mtls_carry_http_and_the_server_learns_the_client(
        protocol: str) -> None:
    ca = TestCA()
    async with mesh(ca, protocol=protocol) as (client, server, _):
        status, body = await get(client.url("out", "/hello"))
        assert status == 200, body
        assert json.loads(body) == {"name": "app", "path": "/hello"}
        # ALPN chose the driver: h2 for an http2 cluster, http/1.1 otherwise.
        assert peer_identities(server) == [CLIENT_ID]
        conns = [c for c in server.server.listeners["in"].connections if hasattr(c, "facts")]
        assert conns[0].facts.alpn == ("h2" if protocol == "http2" else "http/1.1")
        assert conns[0].facts.tls
        assert server.metric("tulle_proxy_protocol_detected_total", protocol="chain:mtls") == 1
        # ADR 0063: the server side's TLS reads go through the shared buffer
        reader = conns[0].transport.get_protocol()
        assert isinstance(reader, TLSReader) and reader.app is conns[0]


async def test_opaque_server_first_tcp_over_mtls_with_the_peer_in_the_flow_log(
        caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCA()
    caplog.set_level(logging.INFO, logger="test.mtls.flow")
    async with mesh(ca) as (client, server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port("tcp-out"))
        assert await asyncio.wait_for(reader.readline(), 10) == b"hello\n"  # server first
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"PING\n"
        writer.close()
        await writer.wait_closed()
        flows: list[logging.LogRecord] = []
        for _ in range(500):  # the flow log is written when the relay has closed
            flows = [r for r in caplog.records if r.name == "test.mtls.flow"]
            if flows:
                break
            await asyncio.sleep(0.01)
        entry = json.loads(flows[0].getMessage())
        assert entry["peer_identity"] == CLIENT_ID
        assert server.metric("tulle_proxy_protocol_detected_total",
                             protocol="chain:mtls-tcp") == 1


async def test_strict_refuses_plaintext_and_keeps_serving_mtls() -> None:
    ca = TestCA()
    async with mesh(ca) as (client, server, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port("in"))
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert got == b""  # closed without a response
        assert server.metric("tulle_proxy_protocol_errors_total", kind="no_filter_chain") == 1
        status, _ = await get(client.url("out"))
        assert status == 200


async def test_permissive_takes_plaintext_and_mtls_on_one_port() -> None:
    ca = TestCA()
    async with mesh(ca, permissive=True) as (client, server, _):
        status, body = await get(f"http://127.0.0.1:{server.port('in')}/plain")
        assert (status, json.loads(body)["path"]) == (200, "/plain")
        status, body = await get(client.url("out", "/secure"))
        assert (status, json.loads(body)["path"]) == (200, "/secure")
        assert server.metric("tulle_proxy_protocol_detected_total", protocol="chain:plain") == 1
        assert server.metric("tulle_proxy_protocol_detected_total", protocol="chain:mtls") == 1
        assert CLIENT_ID in peer_identities(server)


async def test_a_client_certificate_from_another_ca_is_refused() -> None:
    ca, rogue = TestCA(), TestCA()
    async with mesh(ca) as (client, server, _):
        port = server.port("in")
        ctx = mtls_client(rogue, CLIENT_ID)
        ctx.load_verify_locations(cadata=ca.pem)  # it trusts the server; the server not it
        assert await raw_tls_request(port, ctx) == b""
        assert server.metric("tulle_proxy_protocol_errors_total",
                             kind="tls_client_certificate") == 1
        # No certificate at all is refused the same way.
        assert await raw_tls_request(port, mtls_client(ca, "")) == b""
        assert server.metric("tulle_proxy_protocol_errors_total",
                             kind="tls_client_certificate") == 2
        # A good client still gets through, on the same listener.
        assert (await raw_tls_request(port, mtls_client(ca, CLIENT_ID))).startswith(
            b"HTTP/1.1 200")
        assert (await get(client.url("out")))[0] == 200


async def test_an_expired_client_certificate_is_refused() -> None:
    ca = TestCA()
    async with mesh(ca) as (_, server, _):
        port = server.port("in")
        assert await raw_tls_request(port, mtls_client(ca, CLIENT_ID, expired=True)) == b""
        assert server.metric("tulle_proxy_protocol_errors_total",
                             kind="tls_client_certificate") == 1
        assert (await raw_tls_request(port, mtls_client(ca, CLIENT_ID))).startswith(
            b"HTTP/1.1 200")


async def test_an_expired_proxy_identity_gets_503_from_the_server_side_refusal() -> None:
    ca = TestCA()
    async with mesh(ca, client_identity=ca.identity("workload", CLIENT_ID, expired=True)) as (
            client, server, _):
        status, body = await get(client.url("out"))
        # TLS 1.3: the client's handshake is over before the server judges its certificate,
        # so the client proxy learns of the refusal as a reset of its fresh connection.
        assert status in (502, 503)
        assert server.metric("tulle_proxy_protocol_errors_total",
                             kind="tls_client_certificate") >= 1
        no_key_material(body)


async def test_a_server_with_the_wrong_spiffe_id_is_refused_by_the_client(
        caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCA()
    impostor = ca.identity("workload", "spiffe://mesh.local/ns/default/sa/impostor")
    caplog.set_level(logging.DEBUG)
    async with mesh(ca, server_identity=impostor) as (client, server, _):
        status, body = await get(client.url("out"))
        assert status == 503
        assert "spiffe://mesh.local/ns/default/sa/impostor is not one expected" in body
        assert client.metric("tulle_proxy_upstream_peer_identity_rejected_total",
                             cluster="mesh") == 1
        assert client.metric("tulle_proxy_requests_total", cluster="mesh",
                             response_flags="UF") == 1
        # Opaque TCP is refused the same way: the client connection is closed, nothing relayed.
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port("tcp-out"))
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert client.metric("tulle_proxy_upstream_peer_identity_rejected_total",
                             cluster="mesh-tcp") == 1
        no_key_material(body, caplog.text)


async def test_a_server_from_another_ca_is_refused_by_the_client() -> None:
    ca, rogue = TestCA(), TestCA()
    async with mesh(ca, server_identity=rogue.identity("workload", SERVER_ID)) as (
            client, _, _):
        status, body = await get(client.url("out"))
        assert status == 503
        assert "server certificate not trusted" in body
        assert client.metric("tulle_proxy_upstream_connect_failures_total", cluster="mesh") >= 1
        assert client.metric("tulle_proxy_upstream_peer_identity_rejected_total",
                             cluster="mesh") == 0
        no_key_material(body)
