"""`Mesh.spec.observability.tracing`: trace propagation and spans for every proxy of the mesh.

The user's shape of the contract's `telemetry.tracing` (`proxyconfig/telemetry.py`, ADR 0055):
Istio's `sampling` percentage (Telemetry API `randomSamplingPercentage`), the header formats
written, and the OTLP/HTTP collector spans are sent to.  Unset (the default): proxies neither
read nor write trace headers, and make no spans.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.meta import Model
from tulle.proxyconfig.telemetry_checks import otlp_endpoint_error

Format = Literal["w3c", "b3", "b3multi"]


class OTLPExport(Model):
    endpoint: Annotated[str, Field(min_length=1, max_length=2048)]
    """OTLP/HTTP collector base URL, `http://host:port` (4318 is OTLP/HTTP's port); spans go
    to `<endpoint>/v1/traces` as protobuf."""

    @model_validator(mode="after")
    def _url(self) -> OTLPExport:
        err = otlp_endpoint_error(self.endpoint, "endpoint")
        if err is not None:
            raise field_error(("endpoint",), err.message)
        return self


class TracingSettings(Model):
    sampling: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    """Percent of requests that arrive without a sampling decision that are traced (Istio's
    default, 1); a caller's decision (W3C `traceparent` flag, B3 sampled) is always kept."""
    propagation: Annotated[list[Format], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list[Format](["w3c"]))
    """Header formats written on each forwarded request (all of them are read): `w3c`
    (`traceparent`/`tracestate`), `b3` (the single `b3` header), `b3multi` (`x-b3-*`)."""
    otlp: OTLPExport | None = None
    """Where spans are exported; unset: context is propagated, no span is exported."""
    serviceName: Annotated[str, Field(max_length=255)] = ""
    """The spans' `service.name`; empty: each proxy's Service (else its workload name)."""

    @model_validator(mode="after")
    def _unique(self) -> TracingSettings:
        if len(set(self.propagation)) != len(self.propagation):
            raise field_error(("propagation",), "each format at most once")
        return self
