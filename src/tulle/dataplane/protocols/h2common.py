"""What both HTTP/2 engines share with the drivers: limits, errors and error codes.

Why a module of its own: the drivers import these whichever engine runs (`h2engine.py`), and
they must not pull in the pure-Python h2 stack (its import alone costs memory) when the
libnghttp2 engine is the one in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tulle.dataplane.protocols.h2guard import GuardLimits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


MAX_WINDOW = 2**31 - 1
"""The largest flow-control window HTTP/2 allows (RFC 9113 6.9.1)."""


def windows_for(high_water: int) -> tuple[int, int]:
    """The (stream, connection) windows a driver advertises for a `high_water` mark: 4 and 64
    times it, at least 65,535 and 1 MiB, at most `MAX_WINDOW` (ADR 0110: from a 32 MiB mark
    on, 64 times it is more, and both engines refused every HTTP/2 connection)."""
    return (min(max(65_535, 4 * high_water), MAX_WINDOW),
            min(max(1_048_576, 64 * high_water), MAX_WINDOW))


class H2ProtocolError(Exception):
    """The peer broke HTTP/2; GOAWAY is queued in `data_to_send`.  `kind` is the metric label."""

    abuse: ClassVar[bool] = False
    """True: the peer blew an abuse budget (GOAWAY ENHANCE_YOUR_CALM), worth a warning."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class H2Abuse(H2ProtocolError):
    abuse: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Per-connection sizes, taken from `Settings` once per snapshot."""

    max_header_bytes: int = 65_536
    """Request head limit: above it 431 on the stream, above twice it a connection error."""
    stream_window: int = 262_144
    """Our SETTINGS_INITIAL_WINDOW_SIZE: what a peer may send on one stream unacknowledged."""
    connection_window: int = 4_194_304
    high_water: int = 65_536
    """Queued outbound DATA per stream above which `send_data` asks to pause the producer."""
    max_concurrent_streams: int = 100
    """Server side: our SETTINGS_MAX_CONCURRENT_STREAMS; streams past it are refused."""
    guard: GuardLimits | None = None
    """Server side: abuse budgets (`h2guard.py`); None turns them off (upstream connections)."""
