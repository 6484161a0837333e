"""The `authz` network filter: the same decision as the HTTP filter, without a request."""

from __future__ import annotations

import msgspec

from tulle.dataplane.network.authz import DENIED, build
from tulle.dataplane.network.chain import build_chain
from tulle.dataplane.network.filter import CONTINUE, ConnectionFacts
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.network.authz import NetworkAuthz


def cfg(*policies: dict[str, object]) -> NetworkAuthz:
    return msgspec.convert({"type": "authz", "policies": list(policies)}, NetworkAuthz)


def facts(ip: str = "10.0.0.1", identity: str | None = None) -> ConnectionFacts:
    return ConnectionFacts("inbound|5432", "inbound", (ip, 40000), ("10.0.0.9", 5432), None,
                           peer_identity=identity)


class NoControl:
    def resume(self) -> None:
        raise AssertionError

    def reject(self, reason: str) -> None:
        raise AssertionError


def test_identity_rules_match_the_peer_identity_mtls_sets() -> None:
    f = build(cfg({"name": "db/clients", "rules": [{"sources": [{"service_accounts": ["shop/web"]}]}]}))
    ok = facts(identity="spiffe://mesh.local/ns/shop/sa/web")
    assert f.on_connect(ok, NoControl()) is CONTINUE
    assert f.on_connect(facts(identity="spiffe://mesh.local/ns/shop/sa/other"), NoControl()) is DENIED
    assert f.on_connect(facts(identity=None), NoControl()) is DENIED  # plaintext: no identity


def test_decisions_are_counted_with_the_policy_once_the_chain_binds_metrics() -> None:
    metrics = ProxyMetrics()
    chain = build_chain([cfg({"name": "db/deny-net", "action": "DENY",
                              "rules": [{"sources": [{"ip_blocks": ["10.0.0.0/8"]}]}]})],
                        "inbound|5432", metrics)
    assert chain is not None
    f = chain.deciders[0].create()
    assert f.on_connect(facts("10.1.1.1"), NoControl()) is DENIED
    assert f.on_connect(facts("192.168.0.1"), NoControl()) is CONTINUE
    text = metrics.registry.render()
    assert ('tulle_proxy_authz_decisions_total{listener="inbound|5432",policy="db/deny-net",'
            'action="DENY",result="deny"} 1') in text
    assert 'policy="-",action="-",result="allow"} 1' in text
