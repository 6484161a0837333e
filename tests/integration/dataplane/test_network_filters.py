"""Network (L4) filters through a real proxy: a `source_ip` filter refusing (the origin never
sees a connection), admitting (every byte relayed exactly, both relay engines), the flow log's
close record, and a filter that raises (that connection reset and counted, the listener
serving on)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.support.flow_lines import FlowLines, flow_lines, tcp_config, use_engine
from tests.support.proxy import RunningProxy, running_proxy

from tulle.dataplane.network.chain import NetworkChain
from tulle.dataplane.network.filter import (
    STOP,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Verdict,
)
from tulle.dataplane.network.source_ip import SourceIPFilter

pytestmark = pytest.mark.both_loops

FLOW_LOGGER = "tulle.test.flow"
REPLY = b"origin says: " + bytes(range(256)) * 64


@pytest.fixture(params=["splice", "copy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_engine(str(request.param), monkeypatch)


@dataclass
class Origin:
    """A raw TCP origin: records every byte of every connection, answers REPLY after EOF."""

    port: int = 0
    received: list[bytearray] = field(default_factory=list)
    done: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)


@contextlib.asynccontextmanager
async def origin() -> AsyncIterator[Origin]:
    state = Origin()
    tasks: set[asyncio.Task[Any]] = set()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        got = bytearray()
        state.received.append(got)
        try:
            while chunk := await r.read(65536):
                got += chunk
            w.write(REPLY)
            await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()
            state.done.put_nowait(bytes(got))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for t in tasks:
            t.cancel()


@pytest.fixture
def flow_log() -> Iterator[FlowLines]:
    with flow_lines(FLOW_LOGGER) as handler:
        yield handler


config = tcp_config


FILTERS = [{"type": "flow_log", "logger": FLOW_LOGGER},
           {"type": "source_ip", "allow": ["127.0.0.1/32"], "deny": ["127.0.0.2"]}]


async def exchange(p: RunningProxy, payload: bytes, source: str = "127.0.0.1") -> bytes:
    """Send `payload`, half-close, read to the end: what the client got (b"" when refused)."""
    r, w = await asyncio.open_connection("127.0.0.1", p.port("db"), local_addr=(source, 0))
    try:
        w.write(payload)
        w.write_eof()
        try:
            return await asyncio.wait_for(r.read(), 10)
        except ConnectionResetError:
            return b""
    finally:
        w.close()


async def test_an_allowed_client_is_relayed_byte_for_byte(engine: str,
                                                          flow_log: FlowLines) -> None:
    payload = b"SELECT 1;\x00" + bytes(range(256)) * 1000
    loop = asyncio.get_running_loop()
    async with origin() as o, running_proxy(config(o.port, FILTERS)) as p:
        began = loop.time()
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w.write(payload)
        await w.drain()
        relays = p.server.listeners["db"].connections
        while not relays:  # the relay registers when detection hands the connection over
            await asyncio.sleep(0)
        assert {type(c).__name__ for c in relays} == {
            "SpliceRelay" if engine == "splice" else "CopyRelay"}
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 10) == REPLY
        w.close()
        assert await asyncio.wait_for(o.done.get(), 5) == payload
        line = await asyncio.wait_for(flow_log.lines.get(), 5)
        assert line["listener"] == "db" and line["direction"] == "inbound"
        assert line["peer"].startswith("127.0.0.1:")
        assert line["cluster"] == "backend"
        assert line["upstream"] == f"127.0.0.1:{o.port}"
        assert line["bytes_received"] == len(payload)
        assert line["bytes_sent"] == len(REPLY)
        assert line["close_reason"] == "eof"
        assert line["rejected_by"] is None and line["peer_identity"] is None
        # The loop clock (uvloop's ticks in milliseconds): within what the test saw.
        assert 0 <= line["duration_ms"] <= (loop.time() - began) * 1000 + 1
        assert p.metric("tulle_proxy_network_filter_rejections_total") == 0
        assert p.metric("tulle_proxy_tcp_bytes_total", direction="received") == len(payload)


@pytest.mark.parametrize(("source", "reason"), [("127.0.0.2", "denied"),
                                                ("127.0.0.3", "not_allowed")])
async def test_a_refused_client_never_reaches_the_origin(engine: str, flow_log: FlowLines,
                                                         source: str, reason: str) -> None:
    async with origin() as o, running_proxy(config(o.port, FILTERS)) as p:
        assert await exchange(p, b"secret bytes", source=source) == b""
        line = await asyncio.wait_for(flow_log.lines.get(), 5)
        assert line["peer"].startswith(source + ":")
        assert (line["close_reason"], line["rejected_by"], line["reject_reason"]) == (
            "rejected", "source_ip", reason)
        assert line["upstream"] is None and line["bytes_received"] == 0
        assert p.metric("tulle_proxy_network_filter_rejections_total", listener="db",
                        filter="source_ip", reason=reason) == 1
        assert p.metric("tulle_proxy_upstream_connections_total") == 0
        assert p.metric("tulle_proxy_downstream_connections_active") == 0
        # The listener serves on, and the origin saw nothing of the refused client.
        assert await exchange(p, b"legit") == REPLY
        assert await asyncio.wait_for(o.done.get(), 5) == b"legit"
        assert [bytes(b) for b in o.received] == [b"legit"]


async def test_a_filter_that_raises_resets_its_connection_only(
        engine: str, flow_log: FlowLines, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: object) -> object:
        raise RuntimeError("a bug in a filter")

    async with origin() as o, running_proxy(config(o.port, FILTERS)) as p:
        monkeypatch.setattr(SourceIPFilter, "on_connect", broken)
        assert await exchange(p, b"anything") == b""
        line = await asyncio.wait_for(flow_log.lines.get(), 5)
        assert (line["close_reason"], line["rejected_by"]) == ("filter_error", "source_ip")
        assert p.metric("tulle_proxy_network_filter_errors_total", filter="source_ip",
                        hook="on_connect") == 1
        assert "a bug in a filter" in caplog.text
        monkeypatch.undo()
        assert await exchange(p, b"after") == REPLY
        assert [bytes(b) for b in o.received] == [b"after"]


async def test_a_listener_without_network_filters_builds_nothing_for_them(engine: str) -> None:
    async with origin() as o, running_proxy(config(o.port, [])) as p:
        assert p.server.listeners["db"].ctx.network is None
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w.write(b"x")
        (conn,) = p.server.listeners["db"].connections
        assert conn.chain is None  # type: ignore[attr-defined]
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == REPLY
        w.close()


class Gate:
    """A test filter that stops every connection until the test opens or shuts the gate: what
    an external authorization check looks like to the relay."""

    name = "source_ip"  # takes the first place of the declared order
    observer = False

    def __init__(self, stop_timeout: float = 5.0) -> None:
        self.stop_timeout = stop_timeout
        self.waiting: asyncio.Queue[Control] = asyncio.Queue()
        self.closed: list[ConnectionRecord] = []

    def create(self) -> Gate:
        return self

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        self.waiting.put_nowait(control)
        return STOP

    def on_close(self, record: ConnectionRecord) -> None:
        self.closed.append(record)


def gate_listener(p: RunningProxy, gate: Gate) -> None:
    """Put `gate` in front of the listener's relays (the config has no way to name a test
    filter; the chain is what a snapshot would have built)."""
    handle = p.server.listeners["db"]
    handle.ctx.network = NetworkChain([gate], "db", p.server.metrics)


async def test_a_stopped_filter_holds_the_client_until_it_resumes(engine: str) -> None:
    gate = Gate()
    async with origin() as o, running_proxy(config(o.port, [])) as p:
        gate_listener(p, gate)
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w.write(b"early bytes, sent while the check runs")
        control = await asyncio.wait_for(gate.waiting.get(), 5)
        await asyncio.sleep(0.05)  # give a wrong relay time to dial: nothing may reach the origin
        assert o.received == []
        assert p.metric("tulle_proxy_upstream_connections_total") == 0
        control.resume()
        w.write(b" + later")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == REPLY
        w.close()
        assert await asyncio.wait_for(o.done.get(), 5) == (
            b"early bytes, sent while the check runs + later")
        while not gate.closed:
            await asyncio.sleep(0)
        assert gate.closed[0].close_reason == "eof"
        assert gate.closed[0].bytes_received == len(b"early bytes, sent while the check runs"
                                                    b" + later")


async def test_a_stopped_filter_that_rejects_later_resets_the_client(engine: str) -> None:
    gate = Gate()
    async with origin() as o, running_proxy(config(o.port, [])) as p:
        gate_listener(p, gate)
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w.write(b"let me in")
        control = await asyncio.wait_for(gate.waiting.get(), 5)
        control.reject("external_deny")
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionResetError:
            pass
        w.close()
        assert p.metric("tulle_proxy_network_filter_rejections_total",
                        reason="external_deny") == 1
        assert o.received == []
        while not gate.closed:
            await asyncio.sleep(0)
        assert gate.closed[0].close_reason == "rejected"


async def test_a_filter_that_never_answers_is_cut_off_at_its_bound(engine: str) -> None:
    gate = Gate(stop_timeout=0.05)
    async with origin() as o, running_proxy(config(o.port, [])) as p:
        gate_listener(p, gate)
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w.write(b"hello?")
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionResetError:
            pass
        w.close()
        assert p.metric("tulle_proxy_network_filter_rejections_total", reason="timeout") == 1
        assert o.received == []
        assert p.metric("tulle_proxy_downstream_connections_active") == 0


async def test_a_connection_aborted_while_its_filter_waits_is_closed_and_recorded(
        engine: str) -> None:
    gate = Gate()
    async with origin() as o, running_proxy(config(o.port, [])) as p:
        gate_listener(p, gate)
        r, w = await asyncio.open_connection("127.0.0.1", p.port("db"))
        control = await asyncio.wait_for(gate.waiting.get(), 5)
        (conn,) = p.server.listeners["db"].connections
        conn.abort()  # what the drain deadline does
        assert [rec.close_reason for rec in gate.closed] == ["aborted"]
        control.resume()  # too late: ignored, nothing is dialled
        await asyncio.sleep(0.05)
        assert o.received == []
        assert p.metric("tulle_proxy_downstream_connections_active") == 0
        w.close()


async def test_a_connection_limit_holds_across_a_config_swap(engine: str,
                                                            flow_log: FlowLines) -> None:
    limited = [{"type": "connection_limit", "max_connections": 1}]
    async with origin() as o, running_proxy(config(o.port, limited)) as p:
        r1, w1 = await asyncio.open_connection("127.0.0.1", p.port("db"))
        w1.write(b"first")
        await asyncio.wait_for(_until(lambda: len(o.received) == 1), 5)
        # A new snapshot (a flow log added, a new chain built) while the first is open.
        await p.apply(config(o.port, [*limited, {"type": "flow_log", "logger": FLOW_LOGGER}]))
        assert await exchange(p, b"second") == b""
        line = await asyncio.wait_for(flow_log.lines.get(), 5)
        assert (line["rejected_by"], line["reject_reason"]) == ("connection_limit", "over_limit")
        assert p.metric("tulle_proxy_network_filter_rejections_total",
                        filter="connection_limit", reason="over_limit") == 1
        assert len(o.received) == 1
        # The first one finishes; its slot is free for the next client.
        w1.write_eof()
        assert await asyncio.wait_for(r1.read(), 5) == REPLY
        w1.close()
        assert await asyncio.wait_for(o.done.get(), 5) == b"first"
        await asyncio.wait_for(_until(lambda: not p.server.listeners["db"].connections), 5)
        assert await exchange(p, b"third") == REPLY
        assert [bytes(b) for b in o.received] == [b"first", b"third"]


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.005)
