"""The agent's side of live tap: take `TapStart` / `TapStop`, send the hub's batches (ADR 0056).

Kept out of `agent.py` because it is a job of its own with its own timer: while a tap runs (or
an answer waits), a loop flushes the hub every `FLUSH_MS` onto the stream; with no tap it does
not run at all.  A control plane that does not read what it asked for does not grow the proxy:
above `MAX_BACKLOG` unsent bytes a batch's records are not written, only counted as dropped.
The taps live as long as the stream: when it ends, every tap ends (`close`), so a tap never
outlives the control plane session that started it.
"""

from __future__ import annotations

import asyncio
import contextlib

from tulle.dataplane.telemetry.tap import TapHub
from tulle.proxyconfig.stream import TapEvents, TapStart, TapStop, encode
from tulle.proxyconfig.tap import FLUSH_MS

MAX_BACKLOG = 1 << 20
"""Unsent stream bytes above which tap records are dropped (counted) instead of written."""


class TapLink:
    """One stream session's taps."""

    __slots__ = ("_task", "hub", "shed", "writer")

    def __init__(self, hub: TapHub, writer: asyncio.StreamWriter) -> None:
        self.hub = hub
        self.writer = writer
        self._task: asyncio.Task[None] | None = None
        self.shed = 0
        """Records dropped because the stream's output was backed up."""

    def handle(self, msg: TapStart | TapStop) -> None:
        if isinstance(msg, TapStart):
            self.hub.start(msg)
        else:
            self.hub.stop(msg.id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        hub, writer = self.hub, self.writer
        while (hub.taps or hub.ended) and not writer.is_closing():
            await asyncio.sleep(FLUSH_MS / 1000)
            for batch in hub.flush():
                out = batch
                if batch.records and writer.transport.get_write_buffer_size() > MAX_BACKLOG:
                    self.shed += len(batch.records)
                    out = TapEvents(id=batch.id, dropped=batch.dropped + len(batch.records),
                                    ended=batch.ended)
                writer.write(encode(out))

    async def close(self) -> None:
        """The stream ended: stop flushing, end every tap."""
        self.hub.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["MAX_BACKLOG", "TapLink"]
