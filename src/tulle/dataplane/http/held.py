"""A response head held back by a request's filters, with what arrived behind it.

Kept apart from `stream.py`: only routes whose filters stop a response head, or whose data
hooks must see the body before the head may leave, ever make one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tulle.dataplane.exchange import Headers, ResponseHead



class HeldResponse:
    """A response head held back by the filters (a STOP, or data hooks that must see the body
    before the head may leave), with what arrived behind it."""

    __slots__ = ("bodiless", "chunks", "end", "head", "size", "stopped", "trailers")

    def __init__(self, head: ResponseHead, end: bool, stopped: bool) -> None:
        self.head = head
        self.bodiless = end
        """The head arrived ended: it leaves ended, the data hooks see nothing."""
        self.end = end
        self.stopped = stopped
        self.chunks: list[bytes] = []
        self.size = 0
        self.trailers: Headers | None = None
