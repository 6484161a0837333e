"""Open opaque relays follow a config swap (ADR 0117), through a real proxy in process: the
new authorization decides each open relay again at the swap (both relay engines, facts read
from the live sockets when nothing kept them, a peer's SPIFFE identity over mTLS), a filter
that raises cuts its relay, a swap that keeps the policies decides nothing again, and a chain
that no longer relays opaque streams closes its relays after the grace.  The process-level
tests (a control plane, `tulle proxy run`) are in
`tests/integration/controlplane/test_open_tcp_connections.py`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from tests.integration.dataplane.test_mtls import CLIENT_ID, MTLS, client_config
from tests.support.ca import TestCA
from tests.support.flow_lines import FlowLines, flow_lines, tcp_config, use_engine
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.tcp_streams import HeldStream, RecordingEcho, recording_echo

from tulle.dataplane.network.source_ip import SourceIPFilter
from tulle.dataplane.server import SWAP_DRAIN_GRACE

pytestmark = pytest.mark.both_loops

FLOW_LOGGER = "tulle.test.open_relays"
KEPT, CUT = "127.0.0.1", "127.0.0.2"


@pytest.fixture(params=["splice", "copy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_engine(str(request.param), monkeypatch)


@pytest.fixture
def flow_log() -> Iterator[FlowLines]:
    with flow_lines(FLOW_LOGGER) as handler:
        yield handler


config = tcp_config


def source_ip(deny: list[str]) -> dict[str, Any]:
    return {"type": "source_ip", "allow": ["127.0.0.0/8"], "deny": deny}


async def held(p: RunningProxy, app: RecordingEcho, source: str, hello: bytes) -> HeldStream:
    s = await HeldStream.open(p.port("db"), source)
    assert await s.echoes(hello)
    return s


def relays(p: RunningProxy, listener: str = "db") -> int:
    return len(p.server.listeners[listener].connections)


async def test_a_source_ip_change_resets_the_open_relay_it_refuses_at_the_swap(
        engine: str, flow_log: FlowLines) -> None:
    logged = {"type": "flow_log", "logger": FLOW_LOGGER}  # (the chain a relay opened with logs it)
    async with recording_echo() as app, \
            running_proxy(config(app.port, [logged, source_ip([])])) as p:
        kept = await held(p, app, KEPT, b"kept:hello")
        cut = await held(p, app, CUT, b"cut:hello")
        await p.apply(config(app.port, [logged, source_ip([f"{CUT}/32"])]))
        assert relays(p) == 1  # at the swap itself: no grace for a denial
        assert await cut.cut_within(2)
        await cut.write_after(b"cut:after")
        assert await kept.echoes(b"kept:still")
        assert [bytes(b) for b in app.received] == [b"kept:hellokept:still", b"cut:hello"]
        line = await asyncio.wait_for(flow_log.lines.get(), 5)
        assert line["peer"].startswith(CUT + ":")
        assert (line["close_reason"], line["rejected_by"], line["reject_reason"]) == (
            "revoked", "source_ip", "denied")
        assert line["bytes_received"] == len(b"cut:hello")
        assert p.metric("tulle_proxy_network_filter_rejections_total", filter="source_ip",
                        reason="denied") == 1
        assert p.metric("tulle_proxy_tcp_config_closes_total", listener="db",
                        reason="revoked") == 1
        kept.close()


async def test_a_policy_given_to_a_listener_without_filters_reads_the_facts_then(
        engine: str) -> None:
    """Nothing kept the relays' facts when they opened (no filter, no flow log): the swap
    reads them from the live sockets."""
    deny = {"type": "authz", "policies": [
        {"name": "db/no-2", "action": "DENY",
         "rules": [{"sources": [{"ip_blocks": [f"{CUT}/32"]}]}]}]}
    async with recording_echo() as app, running_proxy(config(app.port, [])) as p:
        kept = await held(p, app, KEPT, b"kept:hello")
        cut = await held(p, app, CUT, b"cut:hello")
        assert all(c.chain is None for c in p.server.listeners["db"].connections)  # type: ignore[attr-defined]
        await p.apply(config(app.port, [deny]))
        assert relays(p) == 1
        assert await cut.cut_within(2)
        assert await kept.echoes(b"kept:still")
        assert [bytes(b) for b in app.received] == [b"kept:hellokept:still", b"cut:hello"]
        assert p.metric("tulle_proxy_authz_decisions_total", policy="db/no-2",
                        result="deny") == 1
        kept.close()


async def test_a_recheck_that_raises_cuts_its_relay(
        engine: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: object) -> object:
        raise RuntimeError("a bug in a filter")

    async with recording_echo() as app, running_proxy(config(app.port, [source_ip([])])) as p:
        s = await held(p, app, KEPT, b"hello")
        monkeypatch.setattr(SourceIPFilter, "recheck", broken)
        await p.apply(config(app.port, [source_ip(["10.0.0.0/8"])]))
        assert await s.cut_within(2)  # an authorization that cannot decide lets nothing on
        assert p.metric("tulle_proxy_network_filter_errors_total", filter="source_ip",
                        hook="recheck") == 1
        assert p.metric("tulle_proxy_network_filter_rejections_total",
                        reason="filter_error") == 1
        assert "a bug in a filter" in caplog.text


async def test_a_swap_that_keeps_the_policies_decides_nothing_again(engine: str) -> None:
    """A dry-run denial is counted when the relay opens; a swap that changes the listener but
    not its policies neither counts it again nor looks at the relay."""
    authz = {"type": "authz", "policies": [
        {"name": "db/no-2", "action": "DENY", "dry_run": True,
         "rules": [{"sources": [{"ip_blocks": [f"{CUT}/32"]}]}]}]}
    async with recording_echo() as app, running_proxy(config(app.port, [authz])) as p:
        s = await held(p, app, CUT, b"hello")
        assert p.metric("tulle_proxy_authz_decisions_total", result="dry_run_deny") == 1
        await p.apply(config(app.port, [authz, {"type": "connection_limit",
                                                "max_connections": 10}]))
        await asyncio.sleep(SWAP_DRAIN_GRACE + 0.1)
        assert p.metric("tulle_proxy_authz_decisions_total", result="dry_run_deny") == 1
        assert await s.echoes(b"still")
        s.close()


def chain_config(app: int, chain: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "db", "port": 0, "direction": "inbound",
                       "filter_chains": [{"name": "plain", "match": {"transport": "plaintext"},
                                          **chain}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "web"}]}]}]}],
        "clusters": [{"name": "backend", "protocol": "tcp",
                      "endpoints": [{"address": "127.0.0.1", "port": app}]},
                     {"name": "web", "endpoints": [{"address": "127.0.0.1", "port": app}]}],
    }


async def test_a_chain_that_no_longer_relays_opaque_streams_closes_them_after_the_grace(
        engine: str) -> None:
    """The port's chain keeps its name but now carries HTTP only (a `tcp` port declared
    `http`): a new opaque stream would be parsed as HTTP and go through its route, so the
    open one has no way in either."""
    tcp = {"protocol": "tcp", "cluster": "backend"}
    async with recording_echo() as app, running_proxy(chain_config(app.port, tcp)) as p:
        s = await held(p, app, KEPT, b"hello")
        await p.apply(chain_config(app.port, {"protocol": "http1", "route_table": "rt"}))
        assert relays(p) == 1  # the grace first
        assert await s.cut_within(2)
        await s.write_after(b"after")
        await asyncio.sleep(0.1)
        assert [bytes(b) for b in app.received] == [b"hello"]
        assert p.metric("tulle_proxy_tcp_config_closes_total", reason="no_filter_chain") == 1


# -- a peer's SPIFFE identity, over mTLS ---------------------------------------------------------

def mtls_server(ca: TestCA, app: int, policies: list[dict[str, Any]]) -> dict[str, Any]:
    """An inbound listener whose only chain terminates mTLS and relays (ALPN `tulle-tcp`) to
    `app` through `policies` (none: no network filters, so no facts are kept per relay)."""
    network = [{"type": "authz", "policies": policies}] if policies else []
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "in", "port": 0, "direction": "inbound", "filter_chains": [
            {"name": "mtls-tcp", "match": {"transport": "tls"}, "protocol": "tcp",
             "tls": MTLS, "cluster": "app", "network_filters": network}]}],
        "clusters": [{"name": "app", "protocol": "tcp",
                      "endpoints": [{"address": "127.0.0.1", "port": app}]}],
        "identities": [ca.identity("workload", "spiffe://mesh.local/ns/default/sa/server")],
        "trust_bundles": [ca.bundle("mesh")],
    }


@asynccontextmanager
async def two_hops(ca: TestCA, app: int) -> AsyncIterator[tuple[RunningProxy, RunningProxy]]:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(running_proxy(mtls_server(ca, app, [])))
        client = await stack.enter_async_context(running_proxy(client_config(
            ca, server.port("in"))))
        yield client, server


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.005)


async def test_an_identity_the_new_policy_denies_is_cut_on_its_mtls_stream() -> None:
    ca = TestCA()
    async with recording_echo() as app, two_hops(ca, app.port) as (client, server):
        s = await HeldStream.open(client.port("tcp-out"), KEPT)
        assert await s.echoes(b"hello")
        await asyncio.wait_for(_until(lambda: relays(server, "in") == 1), 5)
        await server.apply(mtls_server(ca, app.port, [
            {"name": "db/not-the-client", "action": "DENY",
             "rules": [{"sources": [{"principals": [CLIENT_ID]}]}]}]))
        assert relays(server, "in") == 0
        assert await s.cut_within(5)  # the client's proxy passes the cut on
        assert [bytes(b) for b in app.received] == [b"hello"]
        assert server.metric("tulle_proxy_authz_decisions_total", policy="db/not-the-client",
                             action="DENY", result="deny") == 1
        assert server.metric("tulle_proxy_tcp_config_closes_total", listener="in",
                             reason="revoked") == 1
