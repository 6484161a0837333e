"""The agent's tap link (ADR 0056): batches written while the stream drains, counted instead
when it does not, no flush loop without a tap, every tap ended with the stream."""

from __future__ import annotations

import asyncio
from typing import Any

from tulle.dataplane.tap_link import MAX_BACKLOG, TapLink
from tulle.dataplane.telemetry.tap import TapHub
from tulle.proxyconfig.model import Listener, Node, ProxyConfig
from tulle.proxyconfig.stream import FrameDecoder, TapEvents, TapStart, TapStop
from tulle.proxyconfig.tap import TapRecord


class Writer:
    def __init__(self, backlog: int = 0) -> None:
        self.data = b""
        self.backlog = backlog
        self.transport = self

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def sent(self) -> list[Any]:
        return FrameDecoder().feed(self.data)


def hub() -> TapHub:
    h = TapHub()
    h.configure(ProxyConfig(version="1", node=Node(name="a-0", namespace="shop"),
                            listeners=[Listener(name="out", port=1)]))
    return h


def record() -> TapRecord:
    return TapRecord(ts_ms=1, direction="outbound", workload="shop/a-0", method="GET", path="/")


async def wait_for(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.01)


async def test_batches_are_written_and_the_loop_stops_with_the_last_tap() -> None:
    h, w = hub(), Writer()
    link = TapLink(h, w)  # type: ignore[arg-type]
    link.handle(TapStart(id="t1"))
    h.taps[0].pending.append(record())
    await wait_for(lambda: w.data)
    (batch,) = w.sent()
    assert isinstance(batch, TapEvents) and batch.id == "t1" and len(batch.records) == 1
    link.handle(TapStop(id="t1"))
    await wait_for(lambda: link._task is not None and link._task.done())
    await link.close()


async def test_a_control_plane_that_does_not_read_gets_counts_not_records() -> None:
    h, w = hub(), Writer(backlog=MAX_BACKLOG + 1)
    link = TapLink(h, w)  # type: ignore[arg-type]
    link.handle(TapStart(id="t1"))
    h.taps[0].pending += [record()] * 50
    h.taps[0].dropped = 3
    await wait_for(lambda: w.data)
    (batch,) = w.sent()
    assert batch.records == [] and batch.dropped == 53 and link.shed == 50
    await link.close()
    assert h.taps == ()
