"""`H1SniffDownstream`: an `auto` listener's connection is the HTTP/1 driver as soon as its first
bytes say HTTP/1, and hands everything else to `DetectDownstream` (ADR 0073).

Each test is an exchange on an in-memory transport: what the client sends, which object serves
it afterwards, what was counted, and what the listener still holds."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from tests.support.listener import listener_handle
from tests.support.transport import FakeTransport

from tulle.dataplane.listeners.detect import DetectDownstream, SilenceWatch
from tulle.dataplane.listeners.factory import protocol_factory
from tulle.dataplane.listeners.h1sniff import H1SniffDownstream
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.protocols.detect import H2_PREFACE, MAX_SNIFF_BYTES
from tulle.proxyconfig import validate

GOOD = b"GET /x HTTP/1.1\r\nHost: elsewhere\r\n\r\n"
"""A request no virtual host takes: answered 404 locally, no upstream needed."""

CLIENT_HELLO = bytes.fromhex("160301002f0100002b0303") + bytes(32) + bytes.fromhex("000002130101000000")


def build(*, tcp_target: bool = False, timeout_ms: int = 600_000, port: int = 18080,
          max_connections: int = 0, **settings: Any) -> ListenerHandle:
    """An explicit `auto` listener routing HTTP to a table that serves only host `a` (so other
    hosts get a local 404); with `tcp_target`, its `cluster` relays what is not HTTP."""
    listener: dict[str, Any] = {"name": "l", "port": port, "protocol": "auto",
                                "route_table": "rt", "detect_timeout_ms": timeout_ms}
    if tcp_target:
        listener["cluster"] = "origin"
    if max_connections:
        listener["max_connections"] = max_connections
    cfg = validate({
        "listeners": [listener],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "a", "domains": ["a"], "rules": [{"backends": [{"cluster": "origin"}]}]}]}],
        "settings": settings,
    })
    return listener_handle(cfg)


def accept(handle: ListenerHandle, make: Any = None) -> tuple[Any, FakeTransport]:
    """What the loop does for an accepted connection: the factory's object, `connection_made`."""
    proto = (make or protocol_factory(handle))()
    t = FakeTransport(extra={"sockname": ("127.0.0.1", handle.ctx.cfg.port)})
    t.protocol = proto
    proto.connection_made(t)
    return proto, t


def counted(handle: ListenerHandle, protocol: str) -> float:
    return handle.ctx.metrics.protocol_detected.labels("l", protocol).value


def errors(handle: ListenerHandle, kind: str) -> float:
    return handle.ctx.metrics.protocol_errors.labels("l", kind).value


async def later(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def written(t: FakeTransport) -> bytes:
    """What was written by the end of this turn (writes wait for it, ADR 0065)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return t.take()


# -- HTTP/1: the same object, no hand-over -------------------------------------------------

async def test_http1_first_bytes_are_served_by_the_same_object() -> None:
    handle = build()
    proto, t = accept(handle)
    assert isinstance(proto, H1SniffDownstream)
    assert proto.sniffing and proto.watched and proto.deadline == 0.0
    proto.data_received(GOOD)
    assert t.get_protocol() is proto  # never handed over
    assert not proto.sniffing and not proto.watched
    assert counted(handle, "http1") == 1
    assert b"HTTP/1.1 404" in (await written(t))
    assert handle.connections == {proto}
    assert proto.watch.live == 0 and not proto.watch.queue  # left the watch at once
    proto.connection_lost(None)
    assert not handle.connections


async def test_the_header_deadline_starts_when_it_is_http1() -> None:
    handle = build(header_timeout_ms=4000)
    proto, _t = accept(handle)
    assert proto.deadline == 0.0 and proto.deadline_kind == ""  # the silence watch governs
    before = asyncio.get_running_loop().time()
    proto.data_received(b"GET / HTTP/1.1\r\n")  # a head begun, not finished
    assert proto.deadline_kind == "header"
    assert before + 4.0 <= proto.deadline < before + 5.0


@pytest.mark.parametrize("cut", [1, 2, 3])
async def test_a_method_split_across_segments_is_still_http1_here(cut: int) -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(GOOD[:cut])
    assert proto.sniffing and counted(handle, "http1") == 0
    proto.data_received(GOOD[cut:])
    assert t.get_protocol() is proto and not proto.sniffing
    assert counted(handle, "http1") == 1
    assert b"HTTP/1.1 404" in (await written(t))


async def test_a_byte_at_a_time_request_is_parsed_once_whole() -> None:
    handle = build()
    proto, t = accept(handle)
    for i in range(len(GOOD)):
        proto.data_received(GOOD[i:i + 1])
    assert counted(handle, "http1") == 1
    out = await written(t)
    assert out.count(b"HTTP/1.1 ") == 1 and b"404" in out


async def test_pipelined_requests_in_the_first_segment_are_all_answered_in_order() -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(GOOD * 3)
    assert (await written(t)).count(b"HTTP/1.1 404") == 3
    assert counted(handle, "http1") == 1


@pytest.mark.parametrize("wire", [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
], ids=["cl_te", "duplicate_cl", "obs_fold", "bare_lf"])
async def test_smuggling_shapes_meet_the_http1_parser_on_the_sniffed_path(wire: bytes) -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(wire)
    assert (await written(t)).startswith(b"HTTP/1.1 400")
    assert errors(handle, "malformed_request") == 1
    assert proto.closing


# -- everything else: handed to DetectDownstream -------------------------------------------

async def test_an_h2_preface_goes_to_the_http2_driver() -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(H2_PREFACE[:10])
    assert proto.sniffing
    proto.data_received(H2_PREFACE[10:])
    successor = t.get_protocol()
    assert type(successor).__name__ == "H2Downstream"
    assert counted(handle, "http2") == 1
    assert handle.connections == {successor}  # one connection, registered once
    assert handle.ctx.metrics.connections_total.labels("l").value == 1
    assert not proto.sniffing and proto.transport is None and proto.watch.live == 0
    t.close()
    assert not handle.connections


async def test_tls_without_a_tcp_target_is_refused() -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(CLIENT_HELLO)
    assert counted(handle, "tls") == 1
    assert errors(handle, "no_cluster") == 1
    assert t.closed and not handle.connections
    assert proto.watch.live == 0


async def test_not_http_with_a_tcp_target_goes_to_the_relay() -> None:
    handle = build(tcp_target=True)
    proto, t = accept(handle)
    proto.data_received(b"\x00\x01binary")
    successor = t.get_protocol()
    assert successor is not proto and not isinstance(successor, (H1Downstream, DetectDownstream))
    assert counted(handle, "tcp") == 1
    assert proto not in handle.connections
    t.close()


async def test_a_token_that_runs_on_to_the_cap_goes_to_a_fresh_http1_driver() -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(b"G" * (MAX_SNIFF_BYTES - 1))
    assert proto.sniffing
    proto.data_received(b"G")
    successor = t.get_protocol()
    assert isinstance(successor, H1Downstream) and successor is not proto
    assert counted(handle, "http1") == 1
    assert (await written(t)).startswith(b"HTTP/1.1 4")  # the parser's: too large, malformed
    assert t.closed or successor.closing


async def test_a_silent_client_without_a_tcp_target_is_closed_at_the_deadline() -> None:
    handle = build(timeout_ms=20)
    proto, t = accept(handle)
    await later(0.1)
    assert t.closed and not handle.connections
    assert counted(handle, "timeout") == 1
    assert proto.watch.live == 0


async def test_a_trickled_prefix_goes_to_a_fresh_http1_driver_at_the_deadline() -> None:
    handle = build(timeout_ms=20)
    proto, t = accept(handle)
    proto.data_received(b"GE")
    await later(0.1)
    successor = t.get_protocol()
    assert isinstance(successor, H1Downstream) and successor is not proto
    assert counted(handle, "partial") == 1
    assert handle.connections == {successor}
    assert successor.deadline_kind == "header"  # its header timeout answers it now


async def test_an_eof_before_any_byte_closes() -> None:
    handle = build()
    proto, t = accept(handle)
    assert proto.eof_received() is False
    assert not proto.sniffing and proto.watch.live == 0
    t.close()
    assert not handle.connections


async def test_an_eof_after_a_prefix_goes_to_what_the_prefix_was_becoming() -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(b"PRI * HTTP/2.0\r\n")  # part of the h2 preface
    proto.eof_received()
    assert counted(handle, "partial") == 1
    assert type(t.get_protocol()).__name__ == "H2Downstream"


async def test_an_opaque_listener_port_is_never_sniffed() -> None:
    handle = build(tcp_target=True, port=3306)
    proto, t = accept(handle)
    assert not proto.sniffing
    assert counted(handle, "opaque") == 1
    assert t.get_protocol() is not proto
    assert proto.watch.live == 0 and not proto.watch.queue
    t.close()


async def test_a_connection_over_the_listener_limit_is_reset_and_never_watched() -> None:
    handle = build(max_connections=1)
    make = protocol_factory(handle)
    first, _t1 = accept(handle, make)
    second = H1SniffDownstream(handle, first.watch)  # past the factory's early check
    t2 = FakeTransport()
    t2.protocol = second
    second.connection_made(t2)
    assert t2.closed and not second.sniffing
    assert first.watch.live == 1  # only the first
    assert handle.connections == {first}


# -- drain, abort, close while sniffing ----------------------------------------------------

@pytest.mark.parametrize("how", ["abort", "connection_lost"])
async def test_abort_and_loss_while_sniffing_leave_nothing(how: str) -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(b"GE")
    if how == "connection_lost":
        t.close()
    else:
        proto.abort()
    assert t.closed and not handle.connections
    assert t.aborted == (how == "abort")
    assert not proto.sniffing and proto.watch.live == 0 and not proto.watch.queue
    assert counted(handle, "partial") == counted(handle, "timeout") == 0


@pytest.mark.parametrize("sent", [b"", b"GE"])
async def test_a_drain_while_sniffing_is_an_idle_http1_connections_lingering_close(
        sent: bytes) -> None:
    """Silent (a pool's connection opened ahead of its request) or a prefix: a FIN, what the
    client still sends is dropped, never a reset; gone from the listener at the client's EOF."""
    handle = build()
    proto, t = accept(handle)
    if sent:
        proto.data_received(sent)
    proto.start_drain()
    await written(t)
    assert t.eof and not t.aborted and t.out == b""
    assert not proto.sniffing and proto.watch.live == 0 and not proto.watch.queue
    assert handle.connections == {proto}  # lingering: the client's side still open
    proto.data_received(b"T / HTTP/1.1\r\nHost: a\r\n\r\n")  # raced the drain: dropped
    await written(t)
    assert t.out == b""
    if not proto.eof_received():  # (what asyncio does then: close the transport)
        t.close()
    await written(t)
    assert t.closed and not t.aborted and not handle.connections
    assert counted(handle, "partial") == counted(handle, "timeout") == counted(handle, "http1") == 0


@pytest.mark.parametrize("sent", [b"", b"\x16\x03"])
async def test_a_drain_while_the_detector_sniffs_closes_in_order(sent: bytes) -> None:
    """`DetectDownstream` (transparent listeners, and what the HTTP/1 driver hands over):
    closed, not reset, and counted closed at once."""
    handle = build()
    watch = SilenceWatch()
    proto = DetectDownstream(handle, watch)
    t = FakeTransport(extra={"sockname": ("127.0.0.1", handle.ctx.cfg.port)})
    t.protocol = proto
    proto.connection_made(t)
    if sent:
        proto.data_received(sent)
    assert handle.connections == {proto} and watch.live == 1
    proto.start_drain()
    assert t.closed and not t.aborted and not handle.connections
    assert watch.live == 0 and not watch.queue
    proto.start_drain()  # again, or after the close: nothing more
    assert not handle.connections


async def test_a_drain_after_it_is_http1_is_the_http1_drivers() -> None:
    handle = build()
    proto, t = accept(handle)
    proto.data_received(b"GET / HTTP/1.1\r\n")
    proto.start_drain()  # idle between requests would close; a head in progress: lingering
    assert not t.closed or t.eof


# -- the flow log ----------------------------------------------------------------------------

class Flows:
    """A flow log that follows every connection it is offered."""

    def __init__(self) -> None:
        self.http: dict[object, str] = {}

    def connection_opened(self, conn: object) -> bool:
        self.http[conn] = "open"
        return True

    def forget(self, conn: object) -> None:
        self.http.pop(conn, None)

    def connection_closed(self, conn: object) -> None:
        self.http.pop(conn, None)


async def test_the_flow_log_follows_it_only_once_it_is_http1() -> None:
    handle = build()
    flows = Flows()
    handle.ctx.flow_log = flows  # type: ignore[assignment]
    proto, _t = accept(handle)
    assert proto not in flows.http and proto not in handle.flows
    proto.data_received(GOOD)
    assert proto in flows.http and handle.flows[proto] is flows  # type: ignore[comparison-overlap]
    other, _t2 = accept(handle)
    other.data_received(b"\x00\x01")  # not HTTP: never an HTTP flow
    assert other not in flows.http and other not in handle.flows


# -- the watch --------------------------------------------------------------------------------

async def test_forget_drops_dead_entries_at_the_tail_at_once() -> None:
    handle = build()
    make = protocol_factory(handle)
    conns = [accept(handle, make)[0] for _ in range(3)]
    watch: SilenceWatch = conns[0].watch
    conns[1].data_received(GOOD)  # decided out of order: stays until the tail goes
    assert len(watch.queue) == 3 and watch.live == 2
    conns[2].data_received(GOOD)
    assert list(watch.queue) == [conns[0]] and watch.live == 1
    conns[0].data_received(GOOD)
    assert not watch.queue and watch.live == 0


async def test_a_lowered_timeout_gets_its_own_timer_which_a_decision_cancels() -> None:
    handle = build(timeout_ms=600_000)
    make = protocol_factory(handle)
    accept(handle, make)
    handle.ctx.cfg = msgspec.structs.replace(handle.ctx.cfg, detect_timeout_ms=50)  # a reload
    quick, t = accept(handle, make)
    assert not quick.watched and quick._timer is not None
    quick.data_received(GOOD)
    assert quick._timer is None
    await later(0.1)
    assert t.get_protocol() is quick and counted(handle, "timeout") == 0


def test_the_never_sniffed_ports_are_joined_once_per_snapshot() -> None:
    """The listener's `opaque_ports` and the built-in defaults are one set on its context,
    which both sniffing drivers test a connection's port against."""
    from tulle.dataplane.listeners.listener_context import DEFAULT_OPAQUE_PORTS

    cfg = validate({
        "listeners": [{"name": "l", "port": 1, "protocol": "auto", "cluster": "origin",
                       "opaque_ports": [7000]}],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]})
    ctx = listener_handle(cfg).ctx
    assert ctx.opaque_ports == DEFAULT_OPAQUE_PORTS | {7000}


# -- the first request head's time counts from the first byte ------------------------------

async def test_sniffing_time_counts_against_the_first_header_timeout() -> None:
    """A client that trickles its first bytes while the listener sniffs gets no more time for
    its head than on an `http1` listener: the deadline counts from the first byte (Envoy's
    `request_headers_timeout`), not from the decision."""
    handle = build(header_timeout_ms=10_000)
    proto, _t = accept(handle)
    loop = asyncio.get_running_loop()
    first = loop.time()
    proto.data_received(b"G")
    assert proto.sniffing and proto.deadline == 0.0
    await later(0.3)
    proto.data_received(b"ET / HTTP/1.1\r\n")
    assert not proto.sniffing and proto.deadline_kind == "header"
    assert first <= proto.deadline - 10.0 <= first + 0.05  # not the decision's + 10 s


async def test_a_head_decided_by_the_detector_keeps_the_first_bytes_time() -> None:
    """The same through `DetectDownstream` (a prefix still undecided at the detection
    timeout goes to the HTTP/1 driver): the driver's header deadline counts from the first
    byte the sniffing driver saw."""
    handle = build(header_timeout_ms=10_000, timeout_ms=200)
    proto, t = accept(handle)
    loop = asyncio.get_running_loop()
    first = loop.time()
    proto.data_received(b"GE")
    async with asyncio.timeout(5):
        while t.get_protocol() is proto:  # the silence watch hands it over at 200 ms
            await later(0.02)
    successor = t.get_protocol()
    assert type(successor).__name__ == "H1Downstream"
    assert counted(handle, "partial") == 1
    assert successor.deadline_kind == "header"
    assert first <= successor.deadline - 10.0 <= first + 0.05
