"""Detection when the first bytes come with the connection (`listeners.detect.peek`, issue 13
item 3): an HTTP verdict in `connection_made`, the bytes left in the socket for the driver;
anything else takes the timer-and-buffer path as before.  Real sockets (a socketpair), the
driver's transport in memory."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tulle.dataplane.listeners.context import ListenerContext, ListenerHandle
from tulle.dataplane.listeners.detect import DetectDownstream, peek
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.listeners.memory import MemoryTransport
from tulle.dataplane.protocols.detect import H2_PREFACE
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager
from tulle.proxyconfig import validate

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def handle() -> ListenerHandle:
    cfg = validate({
        "listeners": [{"name": "auto", "port": 18080, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": [{"backends": [{"cluster": "origin"}]}]}]}],
    })
    metrics = ProxyMetrics()
    routers = {t.name: Router(t, cfg.settings.request_timeout_ms) for t in cfg.route_tables}
    manager = ClusterManager(metrics)
    prepared = manager.prepare(cfg.clusters, cfg.settings)
    manager.commit(prepared)
    ctx = ListenerContext(cfg.listeners[0], cfg.settings, routers, prepared.runtimes, metrics)
    return ListenerHandle("auto", ctx, m_active=metrics.connections_active.labels("auto"),
                          m_total=metrics.connections_total.labels("auto"))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def accept(h: ListenerHandle, sock: socket.socket) -> tuple[MemoryTransport, DetectDownstream]:
    t = MemoryTransport(extra={"socket": sock})
    d = DetectDownstream(h)
    t.protocol = d
    d.connection_made(t)  # type: ignore[arg-type]
    return t, d


def detected(h: ListenerHandle, protocol: str) -> float:
    return h.ctx.metrics.protocol_detected.labels("auto", protocol).value


async def test_http1_already_there_goes_to_its_driver_in_connection_made(pair) -> None:
    ours, client = pair
    client.sendall(REQUEST)
    h = handle()
    t, d = accept(h, ours)
    assert isinstance(t.protocol, H1Downstream)  # handed over before any read
    assert d._timer is None  # no detect timer was ever armed
    assert ours.recv(1024, socket.MSG_PEEK) == REQUEST  # still in the socket, for the driver
    assert detected(h, "http1") == 1
    assert len(h.connections) == 1 and t.protocol in h.connections  # counted once
    t.close()
    assert not h.connections


async def test_http2_preface_already_there_goes_to_the_h2_driver(pair) -> None:
    from tulle.dataplane.listeners.http2 import H2Downstream

    ours, client = pair
    client.sendall(H2_PREFACE)
    h = handle()
    t, _ = accept(h, ours)
    assert isinstance(t.protocol, H2Downstream)
    assert detected(h, "http2") == 1
    t.close()


@pytest.mark.parametrize("first", [b"", b"GE", b"*1\r\n", b"\x16\x03\x01\x00\x05\x01"],
                         ids=["nothing-yet", "a-prefix", "not-http", "tls"])
async def test_anything_else_waits_for_data_as_before(pair, first: bytes) -> None:
    ours, client = pair
    if first:
        client.sendall(first)
    h = handle()
    t, d = accept(h, ours)
    assert t.protocol is d  # undecided: the timer-and-buffer path
    assert d._timer is not None
    assert sum(detected(h, p) for p in ("http1", "http2", "tcp", "tls")) == 0
    d.abort()


def test_peek_never_blocks_and_never_consumes(pair) -> None:
    ours, client = pair
    t = MemoryTransport(extra={"socket": ours})
    assert peek(t) == b""  # nothing yet: EAGAIN, not a wait
    client.sendall(b"abc")
    assert peek(t) == peek(t) == b"abc"
    assert ours.recv(10) == b"abc"
    client.close()
    assert peek(t) == b""  # the peer's EOF is the driver's to read
    assert peek(MemoryTransport()) == b""  # no socket at all (tests, memory transports)
