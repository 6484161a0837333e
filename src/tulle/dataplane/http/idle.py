"""The stream idle timeout: a request with no body bytes either way for a while is ended.

Why not a timer re-armed on every chunk: that is a `call_later` and a `cancel` per chunk on the
hot path.  Instead the stream sets `moved` on each chunk (one attribute store), and a timer
that fires every quarter of the timeout looks at it: four quiet quarters in a row end the
request, so it ends after 1 to 1.25 times the timeout of silence.  Only routes with a stream
idle timeout (`RouteRule.stream_idle_timeout_ms`) make one of these; others pay an attribute
test per chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from tulle.dataplane.http.stream import RequestStream

QUARTERS = 4


class StreamIdle:
    """Watches one request stream for body bytes; tells it `on_idle` after a quiet timeout."""

    __slots__ = ("handle", "loop", "moved", "period", "quiet", "stream")

    def __init__(self, stream: RequestStream, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.loop = loop
        self.period = timeout / QUARTERS
        self.moved = False
        """Set by the stream when body bytes pass either way."""
        self.quiet = 0
        self.handle: asyncio.TimerHandle | None = loop.call_later(self.period, self._check)

    def _check(self) -> None:
        self.handle = None
        stream = self.stream
        if stream.done:
            return
        if self.moved:
            self.moved = False
            self.quiet = 0
        else:
            self.quiet += 1
            if self.quiet >= QUARTERS:
                stream.on_idle()
                return
        self.handle = self.loop.call_later(self.period, self._check)

    def cancel(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()
