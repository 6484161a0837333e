"""No reference cycles on the HTTP/1 request path (issue 6, item 6).

Heads rejected with 431 used to stay alive in reference cycles (codec <-> llhttp parser, driver
<-> codec, exceptions holding frames) until the cyclic collector ran: a flood of 10,000-header
heads took RSS from 53 to 423 MB.  Here the real driver (`H1Downstream`, and `H1Connection`
upstream) runs on fake transports with the collector disabled and every unreachable object
saved: a rejected request (431, 400) and a normal proxied exchange must leave nothing for it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.listener import listener_handle
from tests.support.transport import FakeTransport

from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.upstream.http1 import H1Connection, H1Pool
from tulle.proxyconfig import validate

FILTERS = [{"type": "RequestHeaderModifier", "set": [{"name": "x-a", "value": "1"}]},
           {"type": "ResponseHeaderModifier", "add": [{"name": "x-b", "value": "2"}]}]


def build(filters: bool = False) -> tuple[ListenerHandle, H1Pool]:
    rule: dict[str, Any] = {"backends": [{"cluster": "origin"}]}
    if filters:
        rule["filters"] = FILTERS  # a request stream with a chain run: stream <-> run
    cfg = validate({
        "listeners": [{"name": "l", "port": 18080, "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1", "port": 18081}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": [rule]}]}],
        "settings": {"max_request_header_bytes": 4096},
    })
    handle = listener_handle(cfg)
    cluster = handle.ctx.clusters["origin"]
    pool = cluster.pool_for(cluster.endpoints[0])
    assert isinstance(pool, H1Pool)
    return handle, pool


@pytest.fixture
def no_cyclic_gc() -> Iterator[list[Any]]:
    """Collector off, unreachable objects kept in the returned list for inspection."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def collected() -> list[str]:
    gc.collect()
    found = sorted({type(o).__qualname__ for o in gc.garbage})
    gc.garbage.clear()
    return found


def connect(handle: ListenerHandle) -> tuple[H1Downstream, FakeTransport]:
    down = H1Downstream(handle)
    t = FakeTransport()
    t.protocol = down
    down.connection_made(t)  # type: ignore[arg-type]
    return down, t


def many_headers(n: int) -> bytes:
    return (b"GET / HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(n)) + b"\r\n")


@pytest.mark.parametrize(("wire", "status"), [
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n", b"431",
                 id="head_too_large"),
    pytest.param(many_headers(150), b"431", id="too_many_fields"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400", id="two_hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nX\x01: b\r\n\r\n", b"400", id="bad_bytes"),
])
async def test_a_rejected_request_leaves_no_garbage(no_cyclic_gc: list[Any], wire: bytes,
                                                     status: bytes) -> None:
    handle, _ = build()
    collected()  # the snapshot's own set-up garbage, if any: not what is measured
    for _ in range(3):
        down, t = connect(handle)
        down.data_received(wire)
        await asyncio.sleep(0)  # the answer and its FIN leave at the turn's end (ADR 0069)
        assert t.out.startswith(b"HTTP/1.1 " + status), bytes(t.out[:60])
        t.close()
        del down, t
    assert collected() == []


@pytest.mark.parametrize("filters", [False, True])
async def test_a_proxied_exchange_leaves_no_garbage(no_cyclic_gc: list[Any], filters: bool) -> None:
    handle, pool = build(filters)
    up = H1Connection(pool)
    up_t = FakeTransport()
    up_t.protocol = up
    up.connection_made(up_t)  # type: ignore[arg-type]
    pool.idle.append(up)
    pool.cluster.m_connections_active.value += 1
    collected()
    for _ in range(3):
        down, t = connect(handle)
        down.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0)  # writes leave at the end of the loop's turn (ADR 0065)
        assert up_t.out.startswith(b"GET /x HTTP/1.1\r\n")
        up_t.out.clear()
        up.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await asyncio.sleep(0)
        assert t.out.endswith(b"\r\n\r\nok"), bytes(t.out)
        assert pool.idle == [up]
        t.close()
        del down, t
    up_t.close()  # the upstream connection closes too: nothing of it may linger
    del up, up_t
    assert collected() == []
