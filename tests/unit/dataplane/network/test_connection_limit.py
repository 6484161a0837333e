"""`connection_limit`: slots taken at connect and given back at close, refused peers never hold
one, and the count carries over a snapshot swap."""

from __future__ import annotations

from tulle.dataplane.network.chain import NetworkChain, build_chain
from tulle.dataplane.network.filter import ConnectionFacts, ConnectionRecord, Reject
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.network import ConnectionLimit, FlowLog, SourceIP


def facts(ip: str = "10.0.0.1") -> ConnectionFacts:
    return ConnectionFacts(listener="l", direction="inbound", peer=(ip, 1), local=None,
                           original_destination=None)


def chain(*configs: object) -> NetworkChain:
    c = build_chain(list(configs), "l", ProxyMetrics())  # type: ignore[arg-type]
    assert c is not None
    return c


def closed() -> ConnectionRecord:
    return ConnectionRecord(facts(), "db")


async def test_slots_are_taken_at_connect_and_given_back_at_close() -> None:
    c = chain(ConnectionLimit(max_connections=2))
    a, b, x = (c.connection(facts()) for _ in range(3))
    assert await a.admit() is None
    assert await b.admit() is None
    assert await x.admit() == Reject("over_limit")
    x.closed(closed())  # a refused connection gives back nothing it did not take
    a.closed(closed())
    a.closed(closed())  # twice: still one slot
    y = c.connection(facts())
    assert await y.admit() is None
    assert await c.connection(facts()).admit() == Reject("over_limit")


async def test_a_peer_refused_by_authorization_never_holds_a_slot() -> None:
    c = chain(ConnectionLimit(max_connections=1), SourceIP(deny=["10.9.0.0/16"]))
    for _ in range(3):
        assert await c.connection(facts("10.9.0.1")).admit() == Reject("denied")
    assert await c.connection(facts("10.0.0.1")).admit() is None


async def test_the_count_carries_over_a_swap() -> None:
    old = chain(ConnectionLimit(max_connections=1))
    held = old.connection(facts())
    assert await held.admit() is None
    new = chain(ConnectionLimit(max_connections=1), FlowLog())
    new.adopt(old)
    # The connection admitted under the old snapshot still holds its slot...
    assert await new.connection(facts()).admit() == Reject("over_limit")
    held.closed(closed())
    # ...and gives it back to the count the new snapshot uses.
    assert await new.connection(facts()).admit() is None


async def test_a_raised_limit_applies_to_the_carried_count() -> None:
    old = chain(ConnectionLimit(max_connections=1))
    assert await old.connection(facts()).admit() is None
    new = chain(ConnectionLimit(max_connections=2))
    new.adopt(old)
    assert await new.connection(facts()).admit() is None
    assert await new.connection(facts()).admit() == Reject("over_limit")
