"""Writes held to the end of the loop's turn (`tulle.dataplane.turn`, ADR 0065)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tulle.dataplane.listeners.memory import MemoryTransport
from tulle.dataplane.turn import CLOSE, HALF_CLOSE, WRITE_NOW, HeldWrites, TurnWrites, turn_writes


def held(turn: TurnWrites, transport: Any) -> HeldWrites:
    w = HeldWrites(turn)
    w.attach(transport)
    return w


async def test_held_writes_leave_together_after_the_turns_callbacks() -> None:
    loop = asyncio.get_running_loop()
    turn = TurnWrites(loop)
    a, b = MemoryTransport(), MemoryTransport()
    wa, wb = held(turn, a), held(turn, b)
    scheduled: list[object] = []
    real = loop.call_soon

    def counting_call_soon(cb, *args, **kw):  # type: ignore[no-untyped-def]
        scheduled.append(cb)
        return real(cb, *args, **kw)

    loop.call_soon = counting_call_soon  # type: ignore[method-assign]
    try:
        wa.write(b"head ")
        wb.write(b"x")
        wa.write(b"body")
        assert (a.writes, b.writes) == (0, 0)  # nothing leaves while the turn is still running
    finally:
        loop.call_soon = real  # type: ignore[method-assign]
    assert len(scheduled) == 1  # one flush per turn, however many connections hold bytes
    await asyncio.sleep(0)
    assert (a.writes, b.writes) == (1, 1)  # one write per connection
    assert (a.take(), b.take()) == (b"head body", b"x")
    wa.write(b"next")  # the next turn schedules its own flush
    await asyncio.sleep(0)
    assert a.take() == b"next"


async def test_a_connection_holding_write_now_bytes_writes_at_once() -> None:
    t = MemoryTransport()
    w = held(TurnWrites(asyncio.get_running_loop()), t)
    w.write(b"a" * (WRITE_NOW - 1))
    assert t.writes == 0
    w.write(b"b")
    assert t.writes == 1 and len(t.out) == WRITE_NOW and w.size == 0


async def test_dropped_or_orphaned_bytes_are_not_written() -> None:
    turn = TurnWrites(asyncio.get_running_loop())
    t1, t2 = MemoryTransport(), MemoryTransport()
    w1, w2 = held(turn, t1), held(turn, t2)
    w1.write(b"dropped")
    w1.drop()
    w2.write(b"orphaned")
    w2.transport = None  # the connection is gone
    t2.close()
    await asyncio.sleep(0)
    assert (t1.writes, t2.writes) == (0, 0)


class Failing(MemoryTransport):
    def write(self, data: bytes) -> None:
        raise RuntimeError("boom")


async def test_a_failing_write_does_not_strand_the_others(caplog: pytest.LogCaptureFixture) -> None:
    turn = TurnWrites(asyncio.get_running_loop())
    good = MemoryTransport()
    held(turn, Failing()).write(b"a")
    held(turn, good).write(b"b")
    with caplog.at_level(logging.ERROR, logger="tulle.dataplane.turn"):
        await asyncio.sleep(0)
    assert good.take() == b"b"
    assert "writing held bytes failed" in caplog.text


def test_one_per_event_loop() -> None:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        a = turn_writes(first)
        assert turn_writes(first) is a
        b = turn_writes(second)
        assert b is not a and b.loop is second
    finally:
        first.close()
        second.close()


async def test_a_held_close_follows_the_held_bytes_at_the_turns_end() -> None:
    turn = TurnWrites(asyncio.get_running_loop())
    half, whole, bare = MemoryTransport(), MemoryTransport(), MemoryTransport()
    wh, ww, wb = held(turn, half), held(turn, whole), held(turn, bare)
    wh.write(b"answer")
    wh.finish(HALF_CLOSE)
    ww.write(b"bye")
    ww.finish(CLOSE)
    wb.finish(HALF_CLOSE)  # nothing held: the close alone still waits for the turn's end
    assert len(turn.held) == 3
    assert not (half.eof or whole.closed or bare.eof) and half.writes == whole.writes == 0
    await asyncio.sleep(0)
    assert half.take() == b"answer" and half.eof and not half.closed
    assert whole.take() == b"bye" and whole.closed
    assert bare.eof and bare.writes == 0
    assert wh.end == ww.end == wb.end == 0


async def test_a_dropped_connections_held_close_is_forgotten() -> None:
    turn = TurnWrites(asyncio.get_running_loop())
    t = MemoryTransport()
    w = held(turn, t)
    w.write(b"x")
    w.finish(CLOSE)
    w.drop()
    await asyncio.sleep(0)
    assert t.writes == 0 and not t.closed
    w.flush()  # flushed again (the connection's own flush): nothing left to do
    assert t.writes == 0 and not t.closed


async def test_flush_before_the_turns_end_writes_then_closes_once() -> None:
    turn = TurnWrites(asyncio.get_running_loop())
    t = MemoryTransport()
    w = held(turn, t)
    w.write(b"x")
    w.finish(HALF_CLOSE)
    w.flush()  # e.g. the client's EOF arrived in the same turn
    assert t.take() == b"x" and t.eof and w.end == 0
    t.eof = False
    await asyncio.sleep(0)  # the turn's flush: nothing left, no second FIN
    assert not t.eof and t.writes == 1
class Calls(MemoryTransport):
    """Records which method each write came through, and its buffers."""

    def __init__(self, tls: bool) -> None:
        super().__init__(extra={"ssl_object": object()} if tls else None)
        self.calls: list[tuple[str, int]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", 1))
        super().write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.calls.append(("writelines", len(chunks)))
        super().write(b"".join(chunks))


async def test_small_held_writes_over_tls_leave_as_one_buffer() -> None:
    """Over TLS a response's head and body held in one turn go to the transport as one buffer
    (one buffer is one TLS record, ADR 0067); bytes reaching `WRITE_NOW` go as the list they
    are (no copy of a large body); plaintext keeps `writelines` (one writev, no copy)."""
    turn = TurnWrites(asyncio.get_running_loop())
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"
    t = Calls(tls=True)
    w = held(turn, t)
    w.write(head)
    w.write(b"body")
    await asyncio.sleep(0)
    assert t.calls == [("write", 1)]
    assert t.take() == head + b"body"
    t.calls.clear()
    w.write(b"head")
    w.write(b"b" * WRITE_NOW)
    assert t.calls == [("writelines", 2)]
    assert t.take() == b"head" + b"b" * WRITE_NOW
    plain = Calls(tls=False)
    w = held(turn, plain)
    w.write(head)
    w.write(b"body")
    await asyncio.sleep(0)
    assert plain.calls == [("writelines", 2)]
    assert plain.take() == head + b"body"
