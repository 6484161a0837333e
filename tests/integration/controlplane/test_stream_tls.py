"""The proxy stream over TLS (ADR 0034), attacked with real sockets on 127.0.0.1.

Each test plays one attacker: a plaintext client at the TLS port, a server from another CA
that a proxy with only a token meets first (a MITM at first contact), the same server meeting
a proxy that already trusts the mesh CA, and a server holding a real certificate of the mesh
CA that is a workload's, not the control plane's.  A proxy must send nothing to a server it
has not verified: the fake servers record every byte that reaches them after the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.ca import TestCA, server_context
from tests.support.controlplane import (
    eventually,
    issue_token,
    open_stream,
    running_control_plane,
    subscribe,
)

from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.dataplane.agent import Agent
from tulle.dataplane.identity import WorkloadKey
from tulle.dataplane.server import ProxyServer
from tulle.dataplane.stream_tls import StreamTrust
from tulle.proxyconfig.stream import Error, FrameDecoder, Hello, WorkloadInfo, encode
from tulle.proxyconfig.stream_trust import ca_pin, token_pins

NS = "shop"
WEB = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")


class Recorder:
    """A TLS server (any certificate) that records what clients send once connected."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.handshakes = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                self.received += data
        writer.close()


@contextlib.asynccontextmanager
async def fake_control_plane(ctx: ssl.SSLContext) -> AsyncIterator[tuple[Recorder, int]]:
    rec = Recorder()
    srv = await asyncio.start_server(rec.serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield rec, int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()


async def agent_against(port: int, token: str, trust: StreamTrust | None = None
                        ) -> tuple[Agent, ProxyServer, asyncio.Task[None]]:
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", port)], WEB, token=token, backoff_max=0.05,
                  trust=trust)
    return agent, server, asyncio.get_running_loop().create_task(agent.run())


async def stop(agent: Agent, server: ProxyServer, task: asyncio.Task[None]) -> None:
    agent.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await server.close()


async def test_a_plaintext_client_is_closed_and_the_listener_stays_up() -> None:
    async with running_control_plane() as cp:
        token = await issue_token(cp.api_url, WEB)
        reader, writer = await asyncio.open_connection("127.0.0.1", cp.stream_port)
        hello = Hello(workload=WEB, token=token, csr=WorkloadKey().csr(NS, "web-0"))
        writer.write(encode(hello))  # what a proxy of the plaintext era would send
        got = bytearray()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while data := await reader.read(65536):
                    got += data
        writer.close()
        assert not FrameDecoder().feed(bytes(got)), "a stream frame came back in plaintext"
        assert b"error" not in got and b"certificate" not in got
        assert cp.push is not None
        assert cp.push.counters()["tlsHandshakeFailures"] == 1
        assert cp.push.counters()["unauthenticatedHellos"] == 0  # the hello was never read
        # The token was not consumed by the refused connection: the proxy uses it now.
        proxy = await subscribe([cp.stream_port], WEB, token=token)
        try:
            await eventually(lambda: proxy.agent.held is not None)
        finally:
            await proxy.stop()


async def test_a_proxy_pinned_to_the_mesh_ca_sends_nothing_to_a_server_of_another_ca(
        caplog: pytest.LogCaptureFixture) -> None:
    """First contact, token only: the MITM's chain does not lead to the pinned CA."""
    other = TestCA("mesh.local")
    cert, key = other.svid("spiffe://cluster.local/ns/tulle-system/sa/control-plane")
    async with running_control_plane() as cp, \
            fake_control_plane(server_context(cert + other.pem, key)) as (rec, port):
        token = await issue_token(cp.api_url, WEB)
        with caplog.at_level(logging.INFO):
            agent, server, task = await agent_against(port, token)
            try:
                await eventually(lambda: agent.trust.refusals >= 2)
            finally:
                await stop(agent, server, task)
        assert rec.handshakes >= 2
        assert bytes(rec.received) == b"", "the proxy sent bytes to an unverified server"
        assert agent.trust.anchors == []  # nothing learnt from the impostor
        assert "does not lead to the CA pinned by the bootstrap token" in caplog.text
        assert token not in caplog.text
        # The same token still admits the proxy at the real control plane (never sent).
        proxy = await subscribe([cp.stream_port], WEB, token=token)
        try:
            await eventually(lambda: proxy.agent.held is not None)
        finally:
            await proxy.stop()


async def test_a_proxy_that_trusts_the_mesh_ca_refuses_a_mitm_of_another_ca() -> None:
    """After first contact (or with --ca-file): OpenSSL's verification refuses the MITM."""
    other = TestCA("mesh.local")
    cert, key = other.svid("spiffe://cluster.local/ns/tulle-system/sa/control-plane")
    async with running_control_plane() as cp, \
            fake_control_plane(server_context(cert + other.pem, key)) as (rec, port):
        assert cp.ca is not None
        token = await issue_token(cp.api_url, WEB)
        trust = StreamTrust(ca_pems=cp.ca.trust_bundle())
        agent, server, task = await agent_against(port, token, trust)
        try:
            await eventually(lambda: trust.refusals >= 2)
        finally:
            await stop(agent, server, task)
        assert bytes(rec.received) == b""
        assert token.encode() not in rec.received


async def test_a_workload_certificate_of_the_mesh_ca_cannot_play_the_control_plane() -> None:
    """Right CA, wrong SPIFFE ID: a workload that stole its own key and certificate (or a
    control plane misconfigured with one) is refused after verification, before the hello."""
    async with running_control_plane() as cp:
        assert cp.ca is not None
        key = WorkloadKey()
        signed = cp.ca.sign_csr(key.csr(NS, "evil-0"), SpiffeId("cluster.local", NS, "evil"),
                                "evil-0")
        ctx = server_context(signed.chain_pem, key.pem())
        async with fake_control_plane(ctx) as (rec, port):
            token = await issue_token(cp.api_url, WEB)
            agent, server, task = await agent_against(port, token)
            try:
                await eventually(lambda: agent.trust.refusals >= 2)
            finally:
                await stop(agent, server, task)
            assert rec.handshakes >= 2  # TLS completed: the CA is right ...
            assert bytes(rec.received) == b""  # ... and yet nothing was said
            # The pin did lead to the real root, which the agent keeps for the next try.
            assert [ca_pin(x509.load_pem_x509_certificate(p.encode()))
                    for p in agent.trust.anchors] == token_pins(token)


async def test_no_workload_may_get_the_control_planes_identity() -> None:
    async with running_control_plane() as cp:
        impostor = WorkloadInfo(name="cp-0", namespace="tulle-system",
                                service_account="control-plane")
        # The API refuses to issue such a token (test_bootstrap_tokens_api.py); the stream's
        # own refusal is the defence for one issued before it did, so mint it underneath.
        assert cp.bootstrap_tokens is not None
        token, _ = await cp.bootstrap_tokens.issue("tulle-system", "cp-0", "control-plane")
        reader, writer = await open_stream(cp.stream_port)
        try:
            writer.write(encode(Hello(workload=impostor, token=token,
                                      csr=WorkloadKey().csr("tulle-system", "cp-0"))))
            async with asyncio.timeout(5):
                (msg,) = FrameDecoder().feed(await reader.read(65536))
        finally:
            writer.close()
        assert isinstance(msg, Error)
        assert "the control plane's own identity" in msg.reason
        assert token not in msg.reason


async def test_the_server_certificate_names_the_control_plane_and_is_reissued_in_place(
        ) -> None:
    async with running_control_plane(stream_sans=("cp.example.test", "10.1.2.3")) as cp:
        assert cp.stream_cert is not None and cp.ca is not None

        async def served() -> x509.Certificate:
            reader, writer = await open_stream(cp.stream_port)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            return x509.load_der_x509_certificate(der)

        first = await served()
        san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://cluster.local/ns/tulle-system/sa/control-plane"]
        assert {"localhost", "cp.example.test"} <= set(san.get_values_for_type(x509.DNSName))
        assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} >= {
            "127.0.0.1", "::1", "10.1.2.3"}
        first.verify_directly_issued_by(cp.ca.cert)
        assert first.not_valid_after_utc - first.not_valid_before_utc <= (
            dt.timedelta(hours=24, minutes=5))
        # An open stream is untouched by a re-issue; the next handshake gets the new one.
        held_r, held_w = await open_stream(cp.stream_port)
        cp.stream_cert.renew()
        second = await served()
        assert second.serial_number != first.serial_number
        assert second.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            first.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert not held_w.is_closing()
        held_w.close()


async def test_replicas_sharing_the_ca_each_make_their_own_key(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    store = f"sqlite:{tmp_path / 'cp.db'}"
    async with running_control_plane(store) as a, running_control_plane(store) as b:
        assert a.stream_cert is not None and b.stream_cert is not None
        assert a.stream_cert.signed is not None and b.stream_cert.signed is not None
        assert a.ca_pins() == b.ca_pins()  # one CA ...
        ka = x509.load_pem_x509_certificate(a.stream_cert.signed.chain_pem.encode())
        kb = x509.load_pem_x509_certificate(b.stream_cert.signed.chain_pem.encode())
        assert ka.public_key() != kb.public_key()  # ... a key per replica
        # A proxy bootstrapped on one reconnects to the other with the bundle it received.
        token = await issue_token(a.api_url, WEB)
        proxy = await subscribe([a.stream_port], WEB, token=token)
        try:
            await eventually(lambda: proxy.agent.held is not None)
            anchors = proxy.agent.trust.anchors
            assert anchors == a.ca.trust_bundle() if a.ca else False
            reader, writer = await proxy.agent.trust.connect("127.0.0.1", b.stream_port)
            writer.close()
        finally:
            await proxy.stop()


async def test_plaintext_is_an_opt_out_on_both_ends_and_said_loudly(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with running_control_plane(stream_plaintext=True) as cp:
            assert cp.stream_cert is None
            token = await issue_token(cp.api_url, WEB)
            # A proxy that expects TLS refuses the plaintext server: nothing sent, token kept.
            agent, server, task = await agent_against(cp.stream_port, token)
            try:
                assert cp.push is not None
                push = cp.push  # its ClientHello reads as a bad first frame
                await eventually(lambda: push.counters()["badHellos"] >= 2)
            finally:
                await stop(agent, server, task)
            assert agent.held is None
            assert cp.push is not None and cp.push.counters()["unauthenticatedHellos"] == 0
            # Both ends opted out: it works, and both said so.
            plain = StreamTrust.insecure_plaintext()
            agent, server, task = await agent_against(cp.stream_port, token, plain)
            try:
                await eventually(lambda: agent.held is not None)
            finally:
                await stop(agent, server, task)
    insecure = [r.message for r in caplog.records if "INSECURE" in r.message]
    assert len(insecure) == 2, insecure
    assert token not in caplog.text


async def test_a_stream_socket_handed_over_is_served_over_tls() -> None:
    """`--stream-fd` (ADR 0049): the control plane serves a listening socket it did not bind
    (as `tulle demo` opens it inside a namespace); a proxy is admitted on it over TLS, and the
    certificate names the socket's own address."""
    import os
    import socket

    listener = socket.create_server(("127.0.0.2", 0))
    port = listener.getsockname()[1]
    fd = os.dup(listener.fileno())
    listener.close()  # the control plane holds the only copy now
    async with running_control_plane(stream_fd=fd) as cp:
        assert (cp.stream_host, cp.stream_port) == ("127.0.0.2", port)
        token = await issue_token(cp.api_url, WEB)
        server = ProxyServer()
        agent = Agent(server, [("127.0.0.2", port)], WEB, token=token, backoff_max=0.05)
        task = asyncio.get_running_loop().create_task(agent.run())
        try:
            await eventually(lambda: agent.held is not None)
        finally:
            await stop(agent, server, task)
        assert cp.push is not None and cp.push.counters()["tlsHandshakeFailures"] == 0
