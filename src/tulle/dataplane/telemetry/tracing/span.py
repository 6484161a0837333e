"""A finished span, as the exporter takes it, and where spans go.

Why a value of our own and not an SDK span: a span is built only for a sampled request, once,
when it is done (`tracer.py`); every field is known then, so a frozen value is all it needs.
The OTLP encoder (`otlp/traces.py`) turns batches of these into `ExportTraceServiceRequest`s
off the request path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

SERVER: Final = 2
"""OTLP `SpanKind` of the span an inbound (server-side) proxy makes."""
CLIENT: Final = 3
"""OTLP `SpanKind` of the span an outbound (client-side) proxy makes."""

AttributeValue = str | int | bool
Attributes = tuple[tuple[str, AttributeValue], ...]


@dataclass(frozen=True, slots=True)
class Span:
    trace_id: bytes
    """32 lower-case hex characters."""
    span_id: bytes
    """16 lower-case hex characters: this proxy's span."""
    parent_id: bytes
    """The caller's span (16 hex), or empty for a root span."""
    name: str
    kind: int
    start_ns: int
    """Unix time in nanoseconds."""
    end_ns: int
    attributes: Attributes
    """Attributes whose values repeat from span to span (method, host, cluster, status...):
    the encoder encodes each distinct set once."""
    error: bool
    """OTLP status ERROR (else UNSET)."""
    status_message: str = ""
    tracestate: bytes = b""
    extra: Attributes = ()
    """Attributes that rarely repeat (path, client address, request id), encoded each time."""


class SpanSink(Protocol):
    """Where finished spans go (the OTLP trace exporter).  `add` runs on the request path, so
    it must only queue: never block, never raise."""

    def add(self, span: Span) -> None: ...
