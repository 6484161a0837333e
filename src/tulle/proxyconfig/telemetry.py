"""The `telemetry` section of the contract: one sub-struct per telemetry owner.

Why one section: metrics, access logs, flow logs, traces and tap are all "what the proxy
reports about the traffic it carries", configured from `Mesh.spec.observability`.  Each part
is its own feature (`proxyconfig/features.py`), so a proxy that lacks one is sent the others.
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


class Telemetry(_Base, frozen=True, kw_only=True):
    """What the proxy reports about its traffic, one part per owner."""

    tracing: Tracing | None = None
    """Trace propagation and spans (feature `tracing`); null: no tracing at all."""
