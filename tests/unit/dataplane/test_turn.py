"""Writes held to the end of the loop's turn (`tulle.dataplane.turn`, ADR 0065)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tulle.dataplane.turn import TurnWrites, turn_writes


class Holder:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail

    def flush(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("boom")


async def test_held_connections_flush_together_after_the_turns_callbacks() -> None:
    loop = asyncio.get_running_loop()
    turn = TurnWrites(loop)
    log: list[str] = []
    scheduled: list[object] = []
    real = loop.call_soon

    def counting_call_soon(cb, *args, **kw):  # type: ignore[no-untyped-def]
        scheduled.append(cb)
        return real(cb, *args, **kw)

    loop.call_soon = counting_call_soon  # type: ignore[method-assign]
    try:
        turn.hold(Holder("a", log))
        turn.hold(Holder("b", log))
        assert log == []  # nothing leaves while the turn is still running
    finally:
        loop.call_soon = real  # type: ignore[method-assign]
    assert len(scheduled) == 1  # one flush per turn, however many connections hold bytes
    await asyncio.sleep(0)
    assert log == ["a", "b"]
    turn.hold(Holder("c", log))  # the next turn schedules its own flush
    await asyncio.sleep(0)
    assert log == ["a", "b", "c"]


async def test_a_failing_flush_does_not_strand_the_others(caplog: pytest.LogCaptureFixture) -> None:
    turn = TurnWrites(asyncio.get_running_loop())
    log: list[str] = []
    turn.hold(Holder("bad", log, fail=True))
    turn.hold(Holder("good", log))
    with caplog.at_level(logging.ERROR, logger="tulle.dataplane.turn"):
        await asyncio.sleep(0)
    assert log == ["bad", "good"]
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
