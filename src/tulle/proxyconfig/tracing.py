"""The contract's `telemetry.tracing`: W3C/B3 propagation, sampled spans, OTLP export.

A part of the `telemetry` section (`telemetry.py`), feature `tracing`, ADR 0055; checked
beyond its types by `telemetry_checks.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tulle.proxyconfig.values import Base as _Base

Propagation = Literal["w3c", "b3", "b3multi"]


class Tracing(_Base, frozen=True, kw_only=True):
    """Spans per request and trace-context propagation (feature `tracing`, ADR 0055)."""

    sampling_percent: Annotated[float, Meta(ge=0.0, le=100.0)] = 1.0
    """Share of requests that arrive without a sampling decision that are sampled (a span is
    exported); a caller's decision (`traceparent` flags, B3 sampled) is always honoured."""
    propagation: Annotated[list[Propagation], Meta(min_length=1, max_length=3)] = (
        msgspec.field(default_factory=lambda: ["w3c"]))
    """Formats written on the upstream request; every format is read."""
    otlp_endpoint: Annotated[str, Meta(max_length=2048)] = ""
    """OTLP/HTTP collector base URL (`http://host:4318`); spans are POSTed to
    `<endpoint>/v1/traces`.  Empty: context is propagated, no span is exported."""
    service_name: Annotated[str, Meta(max_length=255)] = ""
    """The `service.name` resource attribute; empty: the node's service, else its name."""
