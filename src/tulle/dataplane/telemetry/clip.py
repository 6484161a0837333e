"""How much of a client-chosen value a log record or a span keeps (ADR 0103).

Why: access log records and spans are queued before they are written or exported, and the
queues are bounded by count (a sink's `queue_size`, 10,000 by default; the span exporter's
2,048).  A record held a client's path, authority, user agent and request id whole: up to the
64 KiB of a request head each time, so a sink that stopped reading (a FIFO, a full pipe, a
stalled disk) or a collector that was down let one client grow the proxy by hundreds of MB
(+366 MB for 3,000 records, measured).  Each such value is now cut to a bound, so a queued
record costs at most a few KiB whatever the client sends.

A cut value says so: its first `bound` bytes, then `...(+N bytes)` with the number of bytes
left out (for `x-forwarded-for` the *end* is kept, `(+N bytes)...` first: the proxy's own
entry, the peer it saw, is the last one).  Values within their bound are untouched and cost a
length test.
"""

from __future__ import annotations

from typing import Final

PATH: Final = 2048
"""An access record's `path` (with its query): long query strings are common, 2 KiB is the
URL length browsers and CDNs have long guaranteed."""
SPAN_PATH: Final = 256
"""A span's `url.path`: Envoy's `max_path_tag_length` default."""
AGENT: Final = 512
"""`user-agent` (a browser's is ~150 bytes)."""
FORWARDED: Final = 512
"""`x-forwarded-for`, its end kept."""
FIELD: Final = 256
"""Other client-chosen values: authority (a DNS name is at most 253), method, request id,
a text format's `%REQ(...)%` (unless the format sets its own, smaller limit)."""


def cut(value: bytes, bound: int) -> bytes:
    """`value` within `bound` bytes, or its first `bound` bytes and the marker."""
    if len(value) <= bound:
        return value
    return value[:bound] + b"...(+%d bytes)" % (len(value) - bound)


def cut_head(value: bytes, bound: int) -> bytes:
    """`value` within `bound` bytes, or the marker and its last `bound` bytes."""
    if len(value) <= bound:
        return value
    return b"(+%d bytes)..." % (len(value) - bound) + value[-bound:]


def cut_text(value: str, bound: int) -> str:
    """`cut` for a value already decoded (latin-1: a character per byte)."""
    if len(value) <= bound:
        return value
    return f"{value[:bound]}...(+{len(value) - bound} bytes)"


__all__ = ["AGENT", "FIELD", "FORWARDED", "PATH", "SPAN_PATH", "cut", "cut_head", "cut_text"]
