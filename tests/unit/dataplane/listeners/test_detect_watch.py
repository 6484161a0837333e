"""`SilenceWatch`: one detection timer per listener (ADR 0071).  Floods of connections that
decide at once, or that never say a word, leave its queue bounded and time out on time."""

from __future__ import annotations

import asyncio

import bench.micro_http1 as micro
import msgspec

from tulle.dataplane.listeners.detect import DetectDownstream, SilenceWatch
from tulle.dataplane.listeners.factory import protocol_factory
from tulle.dataplane.listeners.h1sniff import H1SniffDownstream
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.memory import MemoryTransport


class Watched(MemoryTransport):
    """A transport that says when it was closed."""

    def __init__(self, closed: asyncio.Future[float] | None = None) -> None:
        super().__init__(keep=1 << 12)
        self.on_close = closed

    def close(self) -> None:
        super().close()
        if self.on_close is not None and not self.on_close.done():
            self.on_close.set_result(asyncio.get_running_loop().time())

    abort = close


def auto_listener(timeout_ms: int) -> ListenerHandle:
    handle, _pool = micro.build(protocol="auto")
    ctx = handle.ctx
    ctx.cfg = msgspec.structs.replace(ctx.cfg, detect_timeout_ms=timeout_ms)
    return handle


def open_one(make: object, t: MemoryTransport) -> DetectDownstream | H1SniffDownstream:
    """An `auto` listener's connection: the HTTP/1-first driver (ADR 0073), which keeps the
    same watch as `DetectDownstream` and hands it everything that is not HTTP/1."""
    proto = make()  # type: ignore[operator]
    assert isinstance(proto, (DetectDownstream, H1SniffDownstream))
    t.protocol = proto
    proto.connection_made(t)  # type: ignore[arg-type]
    return proto


def detected(handle: ListenerHandle, protocol: str) -> float:
    return handle.ctx.metrics.protocol_detected.labels(handle.ctx.name, protocol).value


async def test_a_flood_of_connections_that_decide_at_once_keeps_the_queue_bounded() -> None:
    handle = auto_listener(600_000)
    make = protocol_factory(handle)
    watch = None
    for _ in range(5000):
        t = Watched()
        proto = open_one(make, t)
        watch = proto.watch
        proto.data_received(b"SSH-2.0-x\r\n")  # not HTTP; no TCP cluster: refused at once
        assert t.closed
    assert isinstance(watch, SilenceWatch)
    assert watch.live == 0
    assert not watch.queue  # each left from the tail as it decided (`forget`), none kept alive
    assert not handle.connections
    assert detected(handle, "tcp") == 5000


async def test_a_flood_of_silent_connections_times_out_on_time_in_order() -> None:
    loop = asyncio.get_running_loop()
    handle = auto_listener(50)
    make = protocol_factory(handle)
    last: asyncio.Future[float] = loop.create_future()
    start = loop.time()
    transports = [Watched() for _ in range(999)] + [Watched(last)]
    protos = [open_one(make, t) for t in transports]
    assert len(handle.connections) == 1000
    closed_at = await asyncio.wait_for(last, 5)
    assert closed_at - start >= 0.049  # never early
    assert all(t.closed for t in transports)
    assert not handle.connections
    assert detected(handle, "timeout") == 1000
    watch = protos[0].watch
    assert watch.live == 0 and not watch.queue and watch.timer is None


async def test_a_silent_connection_among_deciding_ones_keeps_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    handle = auto_listener(100)
    make = protocol_factory(handle)
    silent_closed: asyncio.Future[float] = loop.create_future()
    start = loop.time()
    silent = open_one(make, Watched(silent_closed))
    for _ in range(2000):  # behind it: connections that decide (compaction keeps them out)
        open_one(make, Watched()).data_received(b"\x00\x01")
    assert len(silent.watch.queue) <= 2 * silent.watch.live + 65
    closed_at = await asyncio.wait_for(silent_closed, 5)
    assert 0.099 <= closed_at - start < 2.0
    assert detected(handle, "timeout") == 1


async def test_a_trickled_prefix_goes_to_http_at_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    handle = auto_listener(30)
    make = protocol_factory(handle)
    t = Watched()
    proto = open_one(make, t)
    proto.data_received(b"GE")  # slowloris: a method, one byte at a time, then nothing
    done = loop.create_future()
    loop.call_later(0.2, done.set_result, None)
    await done
    assert detected(handle, "partial") == 1
    assert t.get_protocol() is not proto  # the HTTP/1 driver has it (its header timeout)
    assert not proto.watched


async def test_a_lowered_timeout_is_not_held_behind_earlier_longer_ones() -> None:
    loop = asyncio.get_running_loop()
    handle = auto_listener(600_000)
    make = protocol_factory(handle)
    patient = open_one(make, Watched())
    handle.ctx.cfg = msgspec.structs.replace(handle.ctx.cfg, detect_timeout_ms=20)  # a reload
    quick_closed: asyncio.Future[float] = loop.create_future()
    start = loop.time()
    open_one(make, Watched(quick_closed))
    closed_at = await asyncio.wait_for(quick_closed, 5)
    assert closed_at - start < 1.0
    assert patient.watched and patient.transport is not None
    patient.abort()
    assert patient.watch.live == 0


async def test_a_lowered_timeout_is_not_held_by_the_timer_of_one_that_decided() -> None:
    """The first connection decided and left the queue empty, its deadline still armed: a
    connection after a reload that lowered the timeout times out at its own deadline."""
    loop = asyncio.get_running_loop()
    handle = auto_listener(600_000)
    make = protocol_factory(handle)
    decided = open_one(make, Watched())
    decided.data_received(b"\x00\x01")  # not HTTP: refused, and out of the watch at once
    assert not decided.watch.queue
    handle.ctx.cfg = msgspec.structs.replace(handle.ctx.cfg, detect_timeout_ms=20)  # a reload
    quick_closed: asyncio.Future[float] = loop.create_future()
    start = loop.time()
    open_one(make, Watched(quick_closed))
    closed_at = await asyncio.wait_for(quick_closed, 2)
    assert closed_at - start < 1.0
    assert decided.watch.live == 0 and not decided.watch.queue
