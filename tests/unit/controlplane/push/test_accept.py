"""Paced frame writes over TLS: every byte, in order, a drain per chunk; a stalled proxy gets
the rest of its frame at once when the drain timeout passes."""

from __future__ import annotations

import asyncio
from typing import Any

from tulle.controlplane.push.accept import WRITE_CHUNK, write_paced


class FakeWriter:
    def __init__(self, stall: bool = False) -> None:
        self.writes: list[bytes] = []
        self.drains = 0
        self.stall = stall

    def writelines(self, chunks: Any) -> None:
        self.writes.append(b"".join(bytes(c) for c in chunks))

    async def drain(self) -> None:
        self.drains += 1
        if self.stall:
            await asyncio.Event().wait()


async def test_a_frame_goes_out_whole_in_order_one_chunk_per_drain() -> None:
    frame = [b"a" * 10, b"b" * (WRITE_CHUNK * 2 + 5), b"c" * 7, b"d" * WRITE_CHUNK]
    w = FakeWriter()
    await write_paced(w, frame, timeout=5)  # type: ignore[arg-type]
    assert b"".join(w.writes) == b"".join(frame)
    assert all(len(x) <= WRITE_CHUNK for x in w.writes)
    assert w.drains == len(w.writes) == -(-sum(map(len, frame)) // WRITE_CHUNK)


async def test_a_proxy_that_stops_reading_gets_the_rest_at_the_timeout() -> None:
    frame = [b"x" * (WRITE_CHUNK * 3)]
    w = FakeWriter(stall=True)
    await write_paced(w, frame, timeout=0.05)  # type: ignore[arg-type]
    assert b"".join(w.writes) == frame[0]
    assert w.drains == 1 and len(w.writes) == 2
