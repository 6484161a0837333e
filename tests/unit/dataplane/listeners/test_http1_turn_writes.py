"""The HTTP/1 drivers hold small writes to the end of the loop's turn (ADR 0065).

Real drivers (`H1Downstream`, `H1Connection`) on in-memory transports that count writes: what
one turn produces leaves when its callbacks are done, one write per connection (a response's
head with its body); large writes and aborts do not wait; a client connection's close waits
behind its bytes (ADR 0069).
"""

from __future__ import annotations

import asyncio
import ssl

from tests.support.transport import FakeTransport
from tests.unit.dataplane.listeners.test_http1_garbage import build, connect

from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.turn import WRITE_NOW
from tulle.dataplane.upstream.http1 import H1Connection, H1Pool

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def upstreams(pool: H1Pool, n: int) -> list[tuple[H1Connection, FakeTransport]]:
    ups = []
    for _ in range(n):
        up, t = H1Connection(pool), FakeTransport()
        t.protocol = up
        up.connection_made(t)  # type: ignore[arg-type]
        pool.idle.append(up)
        pool.cluster.m_connections_active.value += 1
        ups.append((up, t))
    return ups


async def test_one_turns_requests_and_responses_leave_at_its_end_one_write_each() -> None:
    handle, pool = build()
    ups = upstreams(pool, 3)
    downs = [connect(handle) for _ in range(3)]
    for down, _ in downs:
        down.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [t.writes for _, t in ups] == [0, 0, 0]  # held while the turn runs
    await asyncio.sleep(0)
    assert [t.writes for _, t in ups] == [1, 1, 1]
    assert all(t.take().startswith(b"GET /x HTTP/1.1\r\n") for _, t in ups)
    for up, _ in reversed(ups):  # pool.idle is a stack: the last connection went first
        up.data_received(OK)
    assert [t.writes for _, t in downs] == [0, 0, 0]
    await asyncio.sleep(0)
    assert [t.writes for _, t in downs] == [1, 1, 1]  # head and body in one write
    assert all(t.take().endswith(b"\r\n\r\nok") for _, t in downs)


async def test_a_large_write_leaves_at_once() -> None:
    handle, pool = build()
    (up, _), = upstreams(pool, 1)
    down, t = connect(handle)
    down.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0)
    body = b"b" * WRITE_NOW
    up.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    assert t.writes == 1 and t.out.endswith(body)  # not held: a copy, not a wake-up, to save


class Recording(FakeTransport):
    """Remembers the order of writes and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def write(self, data: bytes) -> None:
        assert not self.eof and not self.closed, "a write after the FIN or the close"
        self.events.append("write")
        super().write(data)

    def write_eof(self) -> None:
        self.events.append("eof")
        super().write_eof()

    def close(self) -> None:
        if not self.closed:
            self.events.append("close")
        super().close()


def connect_recording(handle: ListenerHandle) -> tuple[H1Downstream, Recording]:
    down, t = H1Downstream(handle), Recording()
    t.protocol = down
    down.connection_made(t)  # type: ignore[arg-type]
    return down, t


async def answered_with_close() -> tuple[H1Downstream, Recording]:
    """A client's `Connection: close` request, its origin's answer just in: all still held."""
    handle, pool = build()
    (up, _), = upstreams(pool, 1)
    down, t = connect_recording(handle)
    down.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await asyncio.sleep(0)
    up.data_received(OK)
    return down, t


async def test_a_closing_connections_response_and_fin_leave_at_the_turns_end() -> None:
    down, t = await answered_with_close()
    assert t.events == []  # the exchange ended and the close began in this turn: held ...
    await asyncio.sleep(0)
    assert t.events == ["write", "eof"]  # ... then the response, then the FIN, together
    assert t.out.endswith(b"\r\n\r\nok") and not t.closed  # lingering: still reading
    down.data_received(b"late bytes")  # discarded while lingering
    down.eof_received()
    assert t.writes == 1


async def test_a_client_eof_while_the_close_is_held_still_gets_the_response() -> None:
    down, t = await answered_with_close()
    assert not down.eof_received()  # in the same turn: the held answer goes first
    assert t.events == ["write", "eof"] and t.out.endswith(b"\r\n\r\nok")
    t.close()
    await asyncio.sleep(0)  # the turn's flush finds nothing left and writes nothing
    assert t.events == ["write", "eof", "close"]


async def test_a_half_closed_client_gets_its_response_then_the_close() -> None:
    handle, pool = build()
    (up, _), = upstreams(pool, 1)
    down, t = connect_recording(handle)
    down.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert down.eof_received()  # whole requests, then the client's FIN: answer, then close
    await asyncio.sleep(0)
    up.data_received(OK)
    assert t.events == []
    await asyncio.sleep(0)
    assert t.events == ["write", "close"] and t.out.endswith(b"\r\n\r\nok")


async def test_a_close_dropped_with_the_connection_does_nothing() -> None:
    down, t = await answered_with_close()
    down.connection_lost(ConnectionResetError())  # the client reset while all was held
    await asyncio.sleep(0)
    assert t.events == [] and t.writes == 0


async def test_a_local_error_answer_leaves_before_the_close() -> None:
    handle, _ = build()
    down, t = connect_recording(handle)
    down.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    await asyncio.sleep(0)
    assert t.out.startswith(b"HTTP/1.1 400 ") and t.events == ["write", "eof"]


async def test_an_upstream_failure_after_the_head_writes_the_head_then_resets() -> None:
    handle, pool = build()
    (up, _), = upstreams(pool, 1)
    down, t = connect(handle)
    down.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0)
    up.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
    assert t.out.startswith(b"HTTP/1.1 200 OK\r\n")  # what was sent of the response ...
    assert t.closed and not t.eof  # ... then a reset, as before the writes were held
    await asyncio.sleep(0)  # the turn's flush finds nothing left to write, and does not fail
    assert t.writes == 1


async def test_the_drivers_join_held_buffers_only_on_a_tls_transport() -> None:
    """Decided once, when the transport arrives (ADR 0067): a TLS connection's held head and
    body leave as one buffer (one TLS record), a plaintext one's as a `writev`."""
    handle, pool = build()
    ctx = ssl.create_default_context()
    sslobj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())  # a real one, not yet shaken hands
    plain = H1Downstream(handle)
    plain.connection_made(FakeTransport())
    tls = H1Downstream(handle)
    tls.connection_made(FakeTransport(extra={"ssl_object": sslobj}))
    assert not plain.outq.join and tls.outq.join
    up = H1Connection(pool)
    up.connection_made(FakeTransport(extra={"ssl_object": sslobj}))
    assert up.outq.join
    up.connection_lost(None)
    assert up.outq.transport is None and not up.outq.join
