"""`source_ip`: deny before allow, empty allow admits, IPv4-mapped IPv6 peers, odd peers."""

from __future__ import annotations

import pytest

from tulle.dataplane.network.chain import build_chain
from tulle.dataplane.network.filter import CONTINUE, ConnectionFacts, Reject
from tulle.dataplane.network.flow_log import FlowLogFilter
from tulle.dataplane.network.source_ip import SourceIPFilter
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.network import FlowLog, SourceIP


class NoControl:
    def resume(self) -> None:
        raise AssertionError("source_ip never stops")

    def reject(self, reason: str) -> None:
        raise AssertionError("source_ip never stops")


def verdict(f: SourceIPFilter, peer: str) -> object:
    facts = ConnectionFacts(listener="l", direction="inbound", peer=(peer, 1), local=None,
                            original_destination=None)
    return f.on_connect(facts, NoControl())


@pytest.mark.parametrize(("peer", "expected"), [
    ("10.1.2.3", CONTINUE),
    ("10.9.0.1", Reject("denied")),  # denied wins over the allowing /8
    ("192.168.1.1", Reject("not_allowed")),
    ("::ffff:10.1.2.3", CONTINUE),  # an IPv4 client on a dual-stack socket
    ("::ffff:10.9.0.7", Reject("denied")),
    ("fd00::1", CONTINUE),
    ("fd01::1", Reject("not_allowed")),
    ("fe80::1%eth0", Reject("not_allowed")),
    ("not-an-ip", Reject("denied")),
])
def test_deny_then_allow(peer: str, expected: object) -> None:
    f = SourceIPFilter(SourceIP(allow=["10.0.0.0/8", "fd00::/16"], deny=["10.9.0.0/16"]))
    assert verdict(f, peer) == expected


def test_ipv4_mapped_ranges_name_ipv4_peers() -> None:
    f = SourceIPFilter(SourceIP(allow=["::ffff:10.0.0.0/104"], deny=["::ffff:10.9.0.0/112"]))
    assert verdict(f, "10.1.2.3") == CONTINUE
    assert verdict(f, "::ffff:10.1.2.3") == CONTINUE
    assert verdict(f, "10.9.0.1") == Reject("denied")
    assert verdict(f, "192.168.1.1") == Reject("not_allowed")


def test_only_deny_admits_everyone_else() -> None:
    f = SourceIPFilter(SourceIP(deny=["127.0.0.1"]))
    assert verdict(f, "127.0.0.1") == Reject("denied")
    assert verdict(f, "127.0.0.2") is CONTINUE


def test_factories_are_built_from_typed_config_once_and_shared() -> None:
    chain = build_chain([FlowLog(), SourceIP(allow=["10.0.0.0/8"])], "l", ProxyMetrics())
    assert chain is not None
    (decider,) = chain.deciders
    (observer,) = chain.observers
    assert isinstance(decider, SourceIPFilter) and decider.create() is decider
    assert isinstance(observer, FlowLogFilter)
