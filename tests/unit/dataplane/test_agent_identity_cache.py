"""The agent and its identities on disk (ADR 0123): every certificate it takes, and every trust
bundle, is written at once; one read from disk is presented with a CSR at the first hello (a
fresh certificate replaces it), and dropped when that hello is refused over it; a node serving
its cache without a pod whose identity it lost names no version in its hello (which would say
every pod serves) and takes the pod back when its certificate comes.  A node restarted without
a pod removes that pod's kept identity and serves the rest of its cache (ADR 0126)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.support.proxy import free_port

from tulle.controlplane.ca.admission import certificate_message
from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.push.node import merge
from tulle.dataplane.agent import Agent, save_cached
from tulle.dataplane.identity import HeldIdentity, WorkloadKey
from tulle.dataplane.identity_cache import IdentityCache
from tulle.dataplane.server import ProxyServer
from tulle.dataplane.stream_tls import StreamTrust
from tulle.proxyconfig import validate
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import (
    Certificate,
    Error,
    FrameDecoder,
    Hello,
    TrustUpdate,
    WorkloadInfo,
    bundle_id,
    encode,
)

NS = "ns"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate("cluster.local")


def signed(ca: CertificateAuthority, key: WorkloadKey, name: str) -> Certificate:
    return certificate_message(ca, ca.sign_csr(key.csr(NS, name),
                                               SpiffeId("cluster.local", NS, name), name))


def _file(cache: IdentityCache, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cache.path_of(NS, name).read_text())
    return doc


async def test_each_certificate_and_bundle_taken_is_written_at_once(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    cache = IdentityCache(tmp_path / "identity")
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace=NS),
                  workloads=[WorkloadInfo(name="api-0", namespace=NS)], identities=cache)
    try:
        for renewal in range(2):  # issued, then renewed: the file follows each
            agent._pending_key = key = WorkloadKey()
            cert = signed(ca, key, "web-0")
            await agent._handle(cert)
            assert _file(cache, "web-0")["certificate"] == cert.cert_chain
            assert _file(cache, "web-0")["key"] == key.pem()
            assert agent.renewals == renewal
        agent._node_pending[f"{NS}/api-0"] = node_key = WorkloadKey()
        await agent._handle(msgspec.structs.replace(signed(ca, node_key, "api-0"),
                                                    workload=f"{NS}/api-0"))
        assert _file(cache, "api-0")["key"] == node_key.pem()
        # A CA rotation's new bundle is kept with every certificate.
        new = CertificateAuthority.generate("cluster.local")
        both = [*ca.trust_bundle(), *new.trust_bundle()]
        await agent._handle(TrustUpdate(id=bundle_id(both), trust_bundle=both))
        assert _file(cache, "web-0")["trust_bundle"] == both
        assert _file(cache, "api-0")["trust_bundle"] == both
        assert cache.load(NS, "web-0") is not None and cache.load(NS, "api-0", first=False)
    finally:
        await server.close()


def _sidecar_snapshot() -> dict[str, Any]:
    return {"version": "v1", "node": {"name": "web-0", "namespace": NS}, "admin": {"port": 0}}


async def test_an_identity_from_disk_is_a_claim_until_the_control_plane_takes_it(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    cache = IdentityCache(tmp_path / "identity")
    key = WorkloadKey()
    cache.save(NS, "web-0", HeldIdentity(key, signed(ca, key, "web-0")))
    save_cached(tmp_path / "snap.json", validate(_sidecar_snapshot()))
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace=NS),
                  token="used-already", cache_path=tmp_path / "snap.json", identities=cache,
                  trust=StreamTrust(plaintext=True))
    try:
        assert await agent.start_from_cache()
        assert agent.held is not None and agent.held.key.pem() == key.pem()
        assert agent.trust.anchors == ca.trust_bundle()  # the stream verifies by it too
        hello = agent._hello()
        assert hello.certificate and hello.proof and not hello.token
        assert hello.csr and agent._pending_key is not None  # a fresh key at once
        assert hello.last_version == "v1"
        # A control plane refuses that hello over the certificate (another mesh's CA, say):
        # it is dropped, and the next hello proves the workload by its bootstrap token.
        hellos: list[Hello] = []

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = FrameDecoder()
            while not (msgs := decoder.feed(await reader.read(65536))):
                pass
            assert isinstance(msgs[0], Hello)
            hellos.append(msgs[0])
            writer.write(encode(Error(reason="certificate refused: the certificate was not "
                                             "issued by this mesh's CA")))
            await writer.drain()
            writer.close()

        cp = await asyncio.start_server(refuse, "127.0.0.1", 0)
        agent.addresses = [("127.0.0.1", cp.sockets[0].getsockname()[1])]
        agent.trust = StreamTrust(plaintext=True)
        task = asyncio.get_running_loop().create_task(agent.run())
        try:
            for _ in range(500):
                if len(hellos) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            agent.stop()
            task.cancel()
            cp.close()
        assert hellos[0].certificate and not hellos[0].token
        assert agent.held is None
        assert hellos[1].token == "used-already" and hellos[1].csr and not hellos[1].certificate
    finally:
        await server.close()


async def test_a_refusal_that_is_not_about_the_certificate_keeps_it(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    cache = IdentityCache(tmp_path / "identity")
    key = WorkloadKey()
    cache.save(NS, "web-0", HeldIdentity(key, signed(ca, key, "web-0")))
    agent = Agent(ProxyServer(), [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace=NS),
                  token="t", cache_path=tmp_path / "none.json", identities=cache,
                  trust=StreamTrust(plaintext=True))
    assert not await agent.start_from_cache()  # no snapshot: the identity is kept anyway
    assert agent.held is not None
    agent._drop_from_disk("unsupported protocol tulle-stream/9")
    assert agent.held is not None and agent._hello().certificate


def _pod(name: str, port: int) -> dict[str, Any]:
    """A pod's part: an mTLS-only inbound port presenting its certificate."""
    return {"version": f"{name}-1", "node": {"name": name, "namespace": NS},
            "admin": {"port": 0},
            "listeners": [{"name": f"inbound|{name}", "port": port, "direction": "inbound",
                           "filter_chains": [{"name": "mtls", "match": {"transport": "tls"},
                                              "protocol": "http1", "cluster": f"app-{name}",
                                              "tls": {"identity": "workload",
                                                      "trust_bundle": "mesh",
                                                      "min_version": "1.3"}}]}],
            "clusters": [{"name": f"app-{name}",
                          "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}


async def test_a_node_serves_the_pods_whose_identity_it_kept_and_says_it_serves_only_when_all(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    # (parts as the compiler makes them: they name the identities the proxy fills in)
    merged = merge([((NS, "pod-a"), msgspec.convert(_pod("pod-a", free_port()), ProxyConfig)),
                    ((NS, "pod-b"), msgspec.convert(_pod("pod-b", free_port()), ProxyConfig))])
    save_cached(tmp_path / "snap.json", merged)
    cache = IdentityCache(tmp_path / "identity")
    key = WorkloadKey()
    cache.save(NS, "pod-a", HeldIdentity(key, signed(ca, key, "pod-a")))  # pod-b's is lost
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="pod-a", namespace=NS),
                  workloads=[WorkloadInfo(name="pod-b", namespace=NS)], token="a",
                  node_tokens={f"{NS}/pod-b": "b"}, cache_path=tmp_path / "snap.json",
                  identities=cache, trust=StreamTrust(plaintext=True))
    try:
        assert await agent.start_from_cache()
        assert server.config is not None
        assert [lc.workload for lc in server.config.listeners] == [f"{NS}/pod-a"]
        assert agent.current == merged
        hello = agent._hello()
        assert hello.last_version == ""  # it does not serve pod-b: no version says it does
        assert [c.name for c in hello.credentials] == ["pod-b"]
        assert hello.credentials[0].token == "b" and hello.credentials[0].csr
        # pod-b's certificate comes (the answer to that CSR): all of it is served.
        node_key = agent._node_pending[f"{NS}/pod-b"]
        await agent._handle(msgspec.structs.replace(signed(ca, node_key, "pod-b"),
                                                    workload=f"{NS}/pod-b"))
        assert sorted(lc.workload for lc in server.config.listeners) == [f"{NS}/pod-a",
                                                                          f"{NS}/pod-b"]
        assert agent._hello().last_version == merged.version
    finally:
        await server.close()



async def test_a_node_restarted_without_a_pod_removes_its_key_and_serves_the_rest(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    pa, pb = free_port(), free_port()
    merged = merge([((NS, "pod-a"), msgspec.convert(_pod("pod-a", pa), ProxyConfig)),
                    ((NS, "pod-b"), msgspec.convert(_pod("pod-b", pb), ProxyConfig))])
    save_cached(tmp_path / "snap.json", merged)
    cache = IdentityCache(tmp_path / "identity")
    for name in ("pod-a", "pod-b", "web-0"):  # (web-0: a sidecar's, sharing the directory)
        key = WorkloadKey()
        cache.save(NS, name, HeldIdentity(key, signed(ca, key, name)))
    a, b = WorkloadInfo(name="pod-a", namespace=NS), WorkloadInfo(name="pod-b", namespace=NS)

    def agent(server: ProxyServer, *more: WorkloadInfo) -> Agent:
        return Agent(server, [("127.0.0.1", 9)], a, workloads=list(more), identities=cache,
                     cache_path=tmp_path / "snap.json", trust=StreamTrust(plaintext=True))

    server = ProxyServer()
    try:  # both pods: both kept, and the index says they are this proxy's
        assert await agent(server, b).start_from_cache()
        assert cache.recorded(NS, "pod-a") == [f"{NS}/pod-a", f"{NS}/pod-b"]
    finally:
        await server.close()
    server = ProxyServer()
    try:  # pod-b is taken off the node
        node = agent(server)
        assert await node.start_from_cache()
        assert not cache.path_of(NS, "pod-b").exists()
        assert cache.path_of(NS, "pod-a").exists()
        assert cache.path_of(NS, "web-0").exists()  # in no list of this proxy's: not its own
        assert cache.recorded(NS, "pod-a") == [f"{NS}/pod-a"]
        assert server.config is not None
        assert [lc.workload for lc in server.config.listeners] == [f"{NS}/pod-a"]
        assert [i.name for i in server.config.identities] == ["workload"]
        assert node._hello().last_version == merged.version and not node.node_held
    finally:
        await server.close()
