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
