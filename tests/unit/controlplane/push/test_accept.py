"""Paced frame writes: every byte, in order, a drain per chunk; a proxy that takes nothing of a
chunk for the stall timeout is reported (PushStalled) and never gets the rest of its frame
buffered, while one that reads slowly gets all of it however long the whole takes (ADR 0118)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tulle.controlplane.push.accept import WRITE_CHUNK, PushStalled, write_paced


class FakeWriter:
    """Records what is written; each drain takes `pace` seconds, or never ends from the
    `stall_at`-th on (0: never stalls)."""

    def __init__(self, stall_at: int = 0, pace: float = 0.0) -> None:
        self.writes: list[bytes] = []
        self.drains = 0
        self.stall_at = stall_at
        self.pace = pace

    def writelines(self, chunks: Any) -> None:
        self.writes.append(b"".join(bytes(c) for c in chunks))

    async def drain(self) -> None:
        self.drains += 1
        if self.stall_at and self.drains >= self.stall_at:
            await asyncio.Event().wait()
        await asyncio.sleep(self.pace)


async def test_a_frame_goes_out_whole_in_order_one_chunk_per_drain() -> None:
    frame = [b"a" * 10, b"b" * (WRITE_CHUNK * 2 + 5), b"c" * 7, b"d" * WRITE_CHUNK]
    w = FakeWriter()
    await write_paced(w, frame, stall=5)  # type: ignore[arg-type]
    assert b"".join(w.writes) == b"".join(frame)
    assert all(len(x) <= WRITE_CHUNK for x in w.writes)
    assert w.drains == len(w.writes) == -(-sum(map(len, frame)) // WRITE_CHUNK)


async def test_a_proxy_that_stops_reading_is_reported_and_gets_no_more_of_its_frame() -> None:
    """Before: the rest of the frame was written at once when the timeout passed, and stayed
    in the transport (encrypted) until the liveness timeout ended the stream."""
    frame = [b"x" * (WRITE_CHUNK * 3 + 100)]
    w = FakeWriter(stall_at=2)
    with pytest.raises(PushStalled) as err:
        await write_paced(w, frame, stall=0.05)  # type: ignore[arg-type]
    assert b"".join(w.writes) == frame[0][:2 * WRITE_CHUNK]  # nothing after the stalled chunk
    assert err.value.size == len(frame[0])
    assert err.value.unsent == len(frame[0]) - WRITE_CHUNK  # from the chunk that did not drain


async def test_a_slow_proxy_that_keeps_reading_gets_its_whole_frame() -> None:
    """The stall timeout is on progress: five chunks at 0.03 s each take longer than the
    0.05 s timeout in all, and nothing is cut."""
    frame = [b"y" * (WRITE_CHUNK * 5)]
    w = FakeWriter(pace=0.03)
    await write_paced(w, frame, stall=0.05)  # type: ignore[arg-type]
    assert b"".join(w.writes) == frame[0]
