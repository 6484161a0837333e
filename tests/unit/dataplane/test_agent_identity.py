"""A snapshot whose mesh mTLS names the proxy's own SVID (ADR 0033) before the proxy holds one:
NACKed by name and nothing applied — never served without its TLS (no plaintext fallback)."""

from __future__ import annotations

import msgspec

from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.stream import Nack, Snapshot, WorkloadInfo

STRICT_PORT = {
    "version": "v1",
    "admin": {"port": 0},
    "listeners": [{"name": "inbound|8080", "port": 0, "direction": "inbound",
                   "filter_chains": [{"name": "mtls", "match": {"transport": "tls"},
                                      "protocol": "http1", "cluster": "app",
                                      "tls": {"identity": "workload", "trust_bundle": "mesh",
                                              "min_version": "1.3"}}]}],
    "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
}


async def test_mtls_without_a_certificate_yet_is_nacked_by_name_and_nothing_is_served() -> None:
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace="ns"))
    try:
        assert agent.held is None
        reply = await agent._handle(Snapshot(version="v1",
                                             config=msgspec.Raw(msgspec.json.encode(STRICT_PORT))))
        assert isinstance(reply, Nack)
        assert "listeners[0].filter_chains[0].tls.identity: no identity named 'workload'" in (
            reply.reason)
        assert "no trust bundle named 'mesh'" in reply.reason
        assert server.config is None and not server.listeners  # nothing listens, in plaintext or not
        assert agent.current is None
    finally:
        await server.close()


async def test_a_certificate_for_another_key_is_never_paired_with_the_pending_one() -> None:
    """Two CSRs out at once (a reconnect's hello and a renewal) used to pair the first answer
    with the second key: the next hello's proof then failed ('does not verify with its key')
    until the certificate expired.  A certificate is taken only for the key it certifies."""
    from tulle.controlplane.ca.admission import certificate_message
    from tulle.controlplane.ca.authority import CertificateAuthority
    from tulle.controlplane.ca.spiffe import SpiffeId
    from tulle.dataplane.identity import WorkloadKey

    ca = CertificateAuthority.generate("cluster.local")
    who = SpiffeId("cluster.local", "ns", "web")
    server = ProxyServer()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace="ns"))
    try:
        earlier, pending = WorkloadKey(), WorkloadKey()
        agent._pending_key = pending
        stale = certificate_message(ca, ca.sign_csr(earlier.csr("ns", "web-0"), who, "web-0"))
        await agent._handle(stale)
        assert agent.held is None and agent._pending_key is pending
        fresh = certificate_message(ca, ca.sign_csr(pending.csr("ns", "web-0"), who, "web-0"))
        await agent._handle(fresh)
        assert agent.held is not None and agent.held.key is pending
        assert agent._pending_key is None
    finally:
        await server.close()
