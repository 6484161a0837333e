"""The agent's side of a CA rotation (ADR 0035): a `TrustUpdate` is confirmed only once its
bundle is in force, a bundle that cannot be put in force is not confirmed (the old one stays),
and a renewal asked for while a CSR is in flight does not send a second one."""

from __future__ import annotations

from tests.support.ca import TestCA

from tulle.dataplane.agent import Agent
from tulle.dataplane.identity import HeldIdentity, WorkloadKey
from tulle.dataplane.server import ApplyError, ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import Certificate, TrustAck, TrustUpdate, WorkloadInfo, bundle_id


class _Server(ProxyServer):
    """Records what is applied; refuses when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[ProxyConfig] = []
        self.refuse = False

    async def apply(self, cfg: ProxyConfig) -> None:  # type: ignore[override]
        if self.refuse:
            raise ApplyError("trust bundle 'mesh': the CA certificates do not load")
        self.applied.append(cfg)


def _agent(ca: TestCA) -> tuple[Agent, _Server]:
    server = _Server()
    agent = Agent(server, [("127.0.0.1", 9)], WorkloadInfo(name="web-0", namespace="ns"))
    cert, _ = ca.svid("spiffe://cluster.local/ns/ns/sa/web")
    agent.held = HeldIdentity(WorkloadKey(), Certificate(cert_chain=cert,
                                                         trust_bundle=[ca.pem]))
    agent.current = validate({"version": "v1"})
    return agent, server


async def test_a_trust_update_is_put_in_force_then_confirmed() -> None:
    old, new = TestCA(), TestCA()
    agent, server = _agent(old)
    both = [old.pem, new.pem]
    reply = await agent._handle(TrustUpdate(id=bundle_id(both), trust_bundle=both))
    assert reply == TrustAck(id=bundle_id(both))
    assert [b.ca_pems for b in server.applied[-1].trust_bundles] == [both]
    assert agent.held is not None and agent.held.cert.trust_bundle == both
    # The next hello names the bundle held, so a reconnect is caught up if it is stale.
    hello = agent._hello()
    assert hello.trust_bundle == bundle_id(both)
    assert not agent._renew_now.is_set()


async def test_a_bundle_that_cannot_be_put_in_force_is_not_confirmed() -> None:
    old, new = TestCA(), TestCA()
    agent, server = _agent(old)
    server.refuse = True
    reply = await agent._handle(TrustUpdate(id="x", trust_bundle=[new.pem]))
    assert reply is None
    assert agent.held is not None and agent.held.cert.trust_bundle == [old.pem]


async def test_renew_is_asked_once_and_not_while_a_csr_is_in_flight() -> None:
    ca = TestCA()
    agent, _ = _agent(ca)
    await agent._handle(TrustUpdate(id="a", trust_bundle=[ca.pem], renew=True))
    assert agent._renew_now.is_set()
    agent._renew_now.clear()
    agent._pending_key = WorkloadKey()  # a CSR is on its way: its certificate will come
    await agent._handle(TrustUpdate(id="a", trust_bundle=[ca.pem], renew=True))
    assert not agent._renew_now.is_set()
