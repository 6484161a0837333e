"""Stream admission and certificates over the stream, against a real control plane on
127.0.0.1 (issue 9: the attacks on the stream, each one a test)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    issue_token,
    open_stream,
    running_control_plane,
    subscribe,
)

from tulle.dataplane.agent import Agent
from tulle.dataplane.identity import WorkloadKey
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Certificate,
    Csr,
    Error,
    FrameDecoder,
    Hello,
    Message,
    WorkloadCredential,
    WorkloadInfo,
    encode,
)

NS = "shop"


def _workload(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"address": "127.0.0.1", "serviceAccount": name, **spec}}


async def _answers(port: int, hello: Hello, n: int, *then: Message) -> list[Message]:
    """Send one hello on a fresh connection (and `then` after the first answer); the first
    `n` answers, fewer when the control plane closes the stream."""
    reader, writer = await open_stream(port)
    out: list[Message] = []
    try:
        writer.write(encode(hello))
        dec = FrameDecoder()
        while len(out) < n:
            data = await asyncio.wait_for(reader.read(65536), timeout=5)
            if not data:
                break
            had = len(out)
            out += dec.feed(data)
            if had == 0 and out and then:
                writer.write(b"".join(encode(m) for m in then))
        return out[:n]
    finally:
        writer.close()


async def _hello(port: int, hello: Hello) -> Message:
    """Send one hello on a fresh connection; the first answer (Certificate or Error)."""
    got = await _answers(port, hello, 1)
    assert got, "closed without an answer"
    return got[0]


def _h(name: str, **kw: Any) -> Hello:
    return Hello(workload=WorkloadInfo(name=name, namespace=NS), api_versions=[CONFIG_API_VERSION],
                 **kw)


def _leaf(chain: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain.encode())[0]


async def test_proxy_bootstraps_with_a_token_and_gets_its_spiffe_id(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_control_plane() as cp:
        w = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1", service_account="web",
                         labels={"app": "web"})
        token = await issue_token(cp.api_url, w)
        proxy = await subscribe([cp.stream_port], w, token=token)
        try:
            await eventually(lambda: proxy.agent.held is not None and proxy.agent.current)
            held = proxy.agent.held
            assert held is not None
            san = _leaf(held.cert.cert_chain).extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
            assert [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)] \
                == [f"spiffe://cluster.local/ns/{NS}/sa/web"]
            life = held.cert.not_after - held.cert.not_before
            assert abs(life - 24 * 3600) <= 2
            # The proxy runs its config with the identity in the reserved sections.
            running = proxy.server.config
            assert running is not None
            assert [i.name for i in running.identities] == ["workload"]
            assert [b.name for b in running.trust_bundles] == ["mesh"]
            # The Workload was made with the token's identity and labels.
            async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
                async with s.get(f"{cp.api_url}/api/v1/resources/workloads/web-0",
                                 params={"namespace": NS}) as r:
                    wl = await r.json()
                async with s.get(f"{cp.api_url}/api/v1/proxies/{NS}/web-0/config") as r:
                    cfg_text = await r.text()
                # The CA's, the bootstrap tokens' and the API tokens' records are not API
                # kinds: not even an admin reaches them.
                for kind in ("InternalCertificateAuthority", "InternalBootstrapToken",
                             "InternalTokenUse", "APIToken"):
                    async with s.get(f"{cp.api_url}/api/v1/resources/{kind}") as r:
                        assert r.status == 404
            assert wl["spec"]["serviceAccount"] == "web"
            assert wl["metadata"]["labels"] == {"app": "web"}
            assert "PRIVATE KEY" not in cfg_text
            assert cp.ca is not None and cp.ca.key_pem().splitlines()[1] not in cfg_text
        finally:
            await proxy.stop()
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def test_expired_revoked_replayed_tokens_are_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_control_plane() as cp:
        assert cp.bootstrap_tokens is not None
        csr = WorkloadKey().csr(NS, "web-0")
        expired, _ = await cp.bootstrap_tokens.issue(
            NS, "web-0", "web", ttl=dt.timedelta(seconds=1),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        reply = await _hello(cp.stream_port, _h("web-0", token=expired, csr=csr))
        assert isinstance(reply, Error) and "expired" in reply.reason
        assert expired not in reply.reason

        w = WorkloadInfo(name="web-0", namespace=NS)
        revoked = await issue_token(cp.api_url, w)
        tid = revoked.split(".")[1]
        claims = cp.bootstrap_tokens.signer.open(revoked)
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.delete(
                f"{cp.api_url}/api/v1/tokens/{NS}/{claims.id}") as r:
            assert r.status == 200
        reply = await _hello(cp.stream_port, _h("web-0", token=revoked, csr=csr))
        assert isinstance(reply, Error) and "revoked" in reply.reason
        assert tid not in reply.reason

        good = await issue_token(cp.api_url, w)
        first = await _hello(cp.stream_port, _h("web-0", token=good, csr=csr))
        assert isinstance(first, Certificate)
        replay = await _hello(cp.stream_port, _h("web-0", token=good, csr=csr))
        assert isinstance(replay, Error) and "already used" in replay.reason
        assert cp.push is not None and cp.push.counters()["unauthenticatedHellos"] == 3
    for t in (expired, revoked, good):
        assert t not in caplog.text


async def test_no_token_and_bad_csrs_are_refused_and_the_listener_stays_up() -> None:
    async with running_control_plane() as cp:
        w = WorkloadInfo(name="web-0", namespace=NS)
        reply = await _hello(cp.stream_port, _h("web-0"))
        assert isinstance(reply, Error) and "authentication required" in reply.reason
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        other_id = (x509.CertificateSigningRequestBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
                    .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                        f"spiffe://cluster.local/ns/{NS}/sa/admin")]), critical=False)
                    .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
                    .decode())
        for csr, why in ((other_id, "may only have"), ("A" * 5000, "too large"),
                         ("-----BEGIN CERTIFICATE REQUEST-----\nzz\n-----END CERTIFICATE "
                          "REQUEST-----\n", "malformed")):
            token = await issue_token(cp.api_url, w)
            reply = await _hello(cp.stream_port, _h("web-0", token=token, csr=csr))
            assert isinstance(reply, Error) and why in reply.reason, reply
            # A refused CSR does not burn the token: it still works with a good CSR.
            ok = await _hello(cp.stream_port, _h("web-0", token=token,
                                                 csr=WorkloadKey().csr(NS, "web-0")))
            assert isinstance(ok, Certificate)


async def test_proxy_claiming_another_workload_is_refused() -> None:
    async with running_control_plane() as cp:
        token = await issue_token(cp.api_url, WorkloadInfo(name="web-0", namespace=NS))
        key = WorkloadKey()
        reply = await _hello(cp.stream_port, _h("db-0", token=token, csr=key.csr(NS, "db-0")))
        assert isinstance(reply, Error) and "not shop/db-0" in reply.reason
        cert = await _hello(cp.stream_port, _h("web-0", token=token, csr=key.csr(NS, "web-0")))
        assert isinstance(cert, Certificate)
        # With web-0's certificate (and its key) it still cannot be db-0.
        now = int(dt.datetime.now(dt.UTC).timestamp())
        reply = await _hello(cp.stream_port, _h("db-0", certificate=cert.cert_chain,
                                                proof_time=now, proof=key.proof(NS, "db-0", now)))
        assert isinstance(reply, Error) and "not shop/db-0" in reply.reason
        # A certificate without a proof of its key (stolen from a log, say) is refused.
        reply = await _hello(cp.stream_port, _h("web-0", certificate=cert.cert_chain,
                                                proof_time=now,
                                                proof=WorkloadKey().proof(NS, "web-0", now)))
        assert isinstance(reply, Error) and "proof" in reply.reason


async def test_hello_can_no_longer_repoint_a_service() -> None:
    """The issue's attack: a hello for an existing workload with an address of the caller's
    choosing used to overwrite the Workload and repoint the Service's traffic."""
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, _workload("api-v1", address="127.0.0.1"))
        assert status == 200, body
        evil = WorkloadInfo(name="api-v1", namespace=NS, address="10.66.66.66",
                            labels={"app": "api-v1", "role": "admin"})
        reply = await _hello(cp.stream_port, Hello(workload=evil,
                                                   api_versions=[CONFIG_API_VERSION]))
        assert isinstance(reply, Error)
        # Even holding a token for that workload, the hello cannot change the address.
        token = await issue_token(cp.api_url, WorkloadInfo(name="api-v1", namespace=NS,
                                                           service_account="api-v1",
                                                           labels={"app": "api-v1"}))
        await _hello(cp.stream_port, Hello(
            workload=evil, api_versions=[CONFIG_API_VERSION], token=token,
            csr=WorkloadKey().csr(NS, "api-v1")))
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.get(
                f"{cp.api_url}/api/v1/resources/workloads/api-v1",
                params={"namespace": NS}) as r:
            wl = await r.json()
        assert wl["spec"]["address"] == "127.0.0.1"
        assert wl["metadata"]["labels"] == {"app": "api-v1"}


async def test_certificate_is_renewed_at_half_life_and_reconnects_use_it() -> None:
    async with running_control_plane(cert_ttl=dt.timedelta(seconds=4)) as cp:
        w = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")
        proxy = await subscribe([cp.stream_port], w)
        try:
            await eventually(lambda: proxy.agent.held is not None)
            assert proxy.agent.held is not None
            first = proxy.agent.held.cert.cert_chain
            await eventually(lambda: proxy.agent.renewals >= 1, timeout=8)
            assert proxy.agent.held.cert.cert_chain != first
            running = proxy.server.config
            assert running is not None and running.identities[0].cert_chain_pem == \
                proxy.agent.held.cert.cert_chain
        finally:
            await proxy.stop()


async def test_a_proxy_on_a_new_stream_stays_connected_when_its_old_stream_ends() -> None:
    """A proxy that reconnected at once (or whose old stream the control plane sees end only
    later) holds its status with the new stream: the old one's end must not mark it
    disconnected (seen as a node agent that "never came back" in a CI run).  Since ADR 0118
    the new stream ends the old one itself (one stream per workload): the old one is told
    why and closed, and the proxy stays connected on the new one."""
    async with running_control_plane() as cp:
        w = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")
        key = WorkloadKey()
        push = cp.push
        assert push is not None
        r1, w1 = await open_stream(cp.stream_port)
        try:
            w1.write(encode(_h("web-0", token=await issue_token(cp.api_url, w),
                               csr=key.csr(NS, "web-0"))))
            dec, got = FrameDecoder(), list[Message]()
            while not any(isinstance(m, Certificate) for m in got):
                data = await asyncio.wait_for(r1.read(65536), timeout=5)
                assert data, "closed without a certificate"
                got += dec.feed(data)
            cert = next(m for m in got if isinstance(m, Certificate))
            since = push.status[(NS, "web-0")].connected_since
            # The same proxy on a second stream, proving itself with its new certificate.
            at = int(time.time())  # noqa: TID251 - wall clock, as the proof carries it
            r2, w2 = await open_stream(cp.stream_port)
            try:
                w2.write(encode(_h("web-0", certificate=cert.cert_chain, proof_time=at,
                                   proof=key.proof(NS, "web-0", at))))
                await eventually(lambda: push.status[(NS, "web-0")].connected_since > since)
                await eventually(lambda: push.counters()["connections"] == 1)
                while not any(isinstance(m, Error) for m in got):  # the old one is told
                    data = await asyncio.wait_for(r1.read(65536), timeout=5)
                    assert data, f"closed without saying why: {got}"
                    got += dec.feed(data)
                assert push.counters()["replacedStreams"] == 1
                assert push.status[(NS, "web-0")].connected
                w2.close()
                await eventually(lambda: push.counters()["connections"] == 0)
                assert not push.status[(NS, "web-0")].connected
            finally:
                w2.close()
        finally:
            w1.close()


def _cn(chain: str) -> str:
    """The subject CN: the workload a certificate is bound to (ADR 0028)."""
    return str(_leaf(chain).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def _node(*workloads: str, **kw: Any) -> Hello:
    return _h("web-0", workloads=[WorkloadInfo(name=w, namespace=NS) for w in workloads], **kw)


async def test_a_node_proves_every_workload_or_none_is_admitted() -> None:
    """ADR 0032: a hello fronting further workloads needs a credential for each; one refused
    credential refuses the hello and consumes no token (not even the good ones)."""
    async with running_control_plane() as cp:
        web, api, db = (WorkloadInfo(name=n, namespace=NS) for n in ("web-0", "api-0", "db-0"))
        web_t, api_t, db_t = [await issue_token(cp.api_url, w) for w in (web, api, db)]
        keys = {n: WorkloadKey() for n in ("web-0", "api-0")}
        own = {"token": web_t, "csr": keys["web-0"].csr(NS, "web-0")}

        def cred(name: str, token: str) -> WorkloadCredential:
            return WorkloadCredential(namespace=NS, name=name, token=token,
                                      csr=keys["api-0"].csr(NS, name))

        refused = [
            (_node("api-0", **own), "no credential for the further workload shop/api-0"),
            (_node("api-0", credentials=[cred("api-0", db_t)], **own),
             "is for workload shop/db-0, not shop/api-0"),
            (_node("api-0", credentials=[cred("api-0", api_t), cred("db-0", db_t)], **own),
             "credentials for workloads the hello does not front: shop/db-0"),
            (_node("api-0", "api-0", credentials=[cred("api-0", api_t)], **own),
             "named twice"),
            (_node("web-0", **own), "named twice"),
        ]
        for hello, why in refused:
            reply = await _hello(cp.stream_port, hello)
            assert isinstance(reply, Error) and why in reply.reason, (why, reply)
            assert not any(t in reply.reason for t in (web_t, api_t, db_t))
        # Nothing was burnt: the same tokens admit the node, one certificate per workload.
        got = await _answers(cp.stream_port, _node("api-0", credentials=[cred("api-0", api_t)],
                                                   **own), 2)
        assert [type(m) for m in got] == [Certificate, Certificate]
        first, second = got
        assert isinstance(first, Certificate) and isinstance(second, Certificate)
        assert (first.workload, second.workload) == ("", "shop/api-0")
        assert _cn(second.cert_chain) == "api-0"
        # A node cannot renew for a workload it was not admitted for.
        reply = await _hello(cp.stream_port, _h("db-0", token=db_t, csr=WorkloadKey().csr(
            NS, "db-0")))
        assert isinstance(reply, Certificate)  # db-0's token was never consumed either
        web2 = await issue_token(cp.api_url, web)
        got = await _answers(cp.stream_port, _h("web-0", token=web2,
                                                csr=keys["web-0"].csr(NS, "web-0")), 10,
                             Csr(csr=WorkloadKey().csr(NS, "db-0"), workload="shop/db-0"))
        assert isinstance(got[0], Certificate)
        errors = [m for m in got if isinstance(m, Error)]  # a snapshot may come first
        assert len(errors) == 1 and "not a further workload" in errors[0].reason


async def test_a_node_renews_each_workload_and_reconnects_with_their_certificates() -> None:
    async with running_control_plane(cert_ttl=dt.timedelta(seconds=4)) as cp:
        web = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")
        api = WorkloadInfo(name="api-0", namespace=NS, address="127.0.0.1")
        server = ProxyServer()
        agent = Agent(server, [("127.0.0.1", cp.stream_port)], web,
                      token=await issue_token(cp.api_url, web), workloads=[api],
                      node_tokens={"shop/api-0": await issue_token(cp.api_url, api)},
                      backoff_max=0.2)
        task = asyncio.get_running_loop().create_task(agent.run())
        try:
            await eventually(lambda: "shop/api-0" in agent.node_held)
            first = agent.node_held["shop/api-0"].cert.cert_chain
            await eventually(lambda: agent.node_held["shop/api-0"].cert.cert_chain != first,
                             timeout=8)
            renewed = agent.node_held["shop/api-0"].cert.cert_chain
            assert _cn(renewed) == "api-0"
            # The config in force carries the renewed certificate under the node's name.
            await eventually(lambda: server.config is not None and any(
                i.name == "workload:shop/api-0" and i.cert_chain_pem ==
                agent.node_held["shop/api-0"].cert.cert_chain
                for i in server.config.identities))
            # Reconnecting, the tokens are spent: the node proves both with certificates.
            push = cp.push
            assert push is not None
            before = push.counters()["unauthenticatedHellos"]
            since = push.status[(NS, "api-0")].connected_since
            for session in list(push.live):  # drop the stream from the control plane's side
                session.writer.close()
            # (generous: a TLS close the control plane starts can take the agent a few
            # seconds to see on this busy machine; what is tested is how it comes back)
            await eventually(lambda: push.status[(NS, "api-0")].connected
                             and push.status[(NS, "api-0")].connected_since > since
                             and push.status[(NS, "web-0")].connected, timeout=20)
            assert push.counters()["unauthenticatedHellos"] == before
        finally:
            agent.stop()
            task.cancel()
            await server.close()
