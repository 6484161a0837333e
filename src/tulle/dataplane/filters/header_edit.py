"""The per-request part of the header modifiers (`filters/headers.py`): one compiled edit of a
head's header list.

Why a module of its own: the request stream applies a route's header edits straight to the
head (`Chain.edits_only`), so `HeaderEdit.apply` runs on every request of a route with header
filters -- twice on the routing benchmark's route.  It is compiled with the HTTP/1 hot path
(`tulle.native.COMPILED`, ADR 0052, ADR 0064); the filter classes around it subclass the
interpreted `HttpFilter`, which a compiled class may not, so they stay in `headers.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tulle.proxyconfig.filters.headers import HeaderModifier


class HeaderEdit:
    """One compiled modifier: names to drop and fields to append, applied to a header list in
    one pass from the end (deleting in place) and one extend; it runs per request."""

    __slots__ = ("append", "drop")

    def __init__(self, cfg: HeaderModifier) -> None:
        self.drop = frozenset([n.lower().encode() for n in cfg.remove]
                              + [h.name.lower().encode() for h in cfg.set])
        self.append: tuple[tuple[bytes, bytes], ...] = tuple(
            [(h.name.lower().encode(), h.value.encode()) for h in cfg.set]
            + [(h.name.lower().encode(), h.value.encode()) for h in cfg.add])

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        drop = self.drop
        if drop:
            i = len(headers)
            while i:
                i -= 1
                if headers[i][0] in drop:
                    del headers[i]
        headers += self.append
