"""`Mesh.spec.observability.accessLog` / `.flowLog`: access and flow logs of every proxy.

Both are off unless set.  Each compiles one to one into the proxy contract's
`telemetry.access_log` / `telemetry.flow_log` (`proxyconfig/logs.py`, ADR 0054) and every field
is enforced by the proxies: a text format's commands are checked here with the contract's own
list, so a format the proxies would refuse is refused on apply with its field path.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, duration_ms
from tulle.api.meta import Model
from tulle.proxyconfig.log_fields import ACCESS_COMMANDS, FLOW_COMMANDS
from tulle.proxyconfig.logs import DEFAULT_ACCESS_FORMAT, DEFAULT_FLOW_FORMAT, format_errors

TextFormat = Annotated[str, Field(min_length=1, max_length=4096)]
DAY_MS = 86_400_000


class LogSinkSettings(Model):
    """Where records go: `stdout` (the proxy's standard output), a `file` or an OTLP
    collector (`otlp`, logs over OTLP/HTTP protobuf to `<endpoint>/v1/logs`)."""

    type: Literal["stdout", "file", "otlp"] = "stdout"
    path: Annotated[str, Field(max_length=4096, pattern=r"^(/[^\x00]*)?$")] = ""
    """`file`: an absolute path on the proxy's host; reopened when rotated away."""
    endpoint: Annotated[str, Field(max_length=2048, pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$")] = ""
    """`otlp`: the collector's base URL (`http://otel-collector:4318`)."""
    queueSize: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Records waiting at most; a record finding the queue full is dropped and counted."""
    flushInterval: Duration = "1s"
    """Longest a record waits before it is written (10ms to 60s)."""

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> LogSinkSettings:
        if self.type == "file" and not self.path:
            raise field_error(("path",), "a file sink needs an absolute path")
        if self.type != "file" and self.path:
            raise field_error(("path",), "only a file sink has a path")
        if self.type == "otlp" and not self.endpoint:
            raise field_error(("endpoint",), "an otlp sink needs the collector's URL")
        if self.type != "otlp" and self.endpoint:
            raise field_error(("endpoint",), "only an otlp sink has an endpoint")
        if not 10 <= duration_ms(self.flushInterval) <= 60_000:
            raise field_error(("flushInterval",), "must be between 10ms and 60s")
        return self


class LogFilterSettings(Model):
    """Which requests are logged; with several conditions, a request meeting any is."""

    statusMin: Annotated[int, Field(ge=0, le=599)] = 0
    """Requests with at least this status; 0: no such condition."""
    durationMin: Duration = "0s"
    """Requests that took at least this long; "0s": no such condition."""
    errorsOnly: bool = False
    """Failed requests: status >= 500, a response flag (UF, UT, ...), or no response."""

    @model_validator(mode="after")
    def _bounded(self) -> LogFilterSettings:
        if duration_ms(self.durationMin) > DAY_MS:
            raise field_error(("durationMin",), "must be at most 24h")
        return self


class AccessLogSettings(Model):
    """One record per HTTP request of every proxy."""

    format: Literal["json", "text"] = "json"
    textFormat: TextFormat = DEFAULT_ACCESS_FORMAT
    """Envoy's command syntax: `%START_TIME% %REQ(:METHOD)% %RESPONSE_CODE% ...`."""
    sink: LogSinkSettings = Field(default_factory=LogSinkSettings)
    samplePercent: Annotated[float, Field(ge=0.0, le=100.0)] = 100.0
    """Share of the requests passing `filter` that are logged."""
    filter: LogFilterSettings = Field(default_factory=LogFilterSettings)

    @model_validator(mode="after")
    def _known_commands(self) -> AccessLogSettings:
        if self.format == "text":
            errors = format_errors(self.textFormat, ACCESS_COMMANDS, "textFormat")
            if errors:
                raise field_error(("textFormat",), errors[0].message)
        return self


class FlowLogSettings(Model):
    """One record per relayed TCP connection of every proxy, at its end and periodically."""

    format: Literal["json", "text"] = "json"
    textFormat: TextFormat = DEFAULT_FLOW_FORMAT
    sink: LogSinkSettings = Field(default_factory=LogSinkSettings)
    interval: Duration = "60s"
    """Interim records of connections open longer than this, every this long; "0s": only when
    a connection ends."""

    @model_validator(mode="after")
    def _known_commands(self) -> FlowLogSettings:
        if duration_ms(self.interval) > DAY_MS:
            raise field_error(("interval",), "must be at most 24h")
        if self.format == "text":
            errors = format_errors(self.textFormat, FLOW_COMMANDS, "textFormat")
            if errors:
                raise field_error(("textFormat",), errors[0].message)
        return self


__all__ = ["AccessLogSettings", "FlowLogSettings", "LogFilterSettings", "LogSinkSettings"]
