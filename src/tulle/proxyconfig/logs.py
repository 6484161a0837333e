"""The contract's access log and flow log settings (`telemetry.access_log`, `telemetry.flow_log`).

Why a module of their own: both signals write *records* (one per request, one per TCP
connection) to the same kinds of sink (stdout, a file, OTLP logs) with the same bounded,
never-blocking queue, so the sink and its limits are one struct here, shared.  Runtime:
`tulle.dataplane.telemetry.access_log`, `flow_records`, `sinks` (ADR 0054).

Formats: `json` (one object per line, the fields named in docs/observability/logs.md) or
`text` with an Envoy-style format string (`%START_TIME% %REQ(:METHOD)% %RESPONSE_CODE%`);
every JSON field is also a `%FIELD_NAME%` command.  An unknown command is refused with the
field path (`check`).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from tulle.errors import FieldError
from tulle.proxyconfig.log_fields import ACCESS_COMMANDS, FLOW_COMMANDS
from tulle.proxyconfig.values import Base

DEFAULT_ACCESS_FORMAT: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%UPSTREAM_DURATION% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"')
"""Envoy's default access log format, with Tulle's `%UPSTREAM_DURATION%` where Envoy reads the
upstream's `x-envoy-upstream-service-time` response header."""

DEFAULT_FLOW_FORMAT: Final = (
    "%START_TIME% %EVENT% %DIRECTION% %SOURCE_ADDRESS% -> %DESTINATION_ADDRESS% "
    "%PROTOCOL% %BYTES_RECEIVED%/%PACKETS_RECEIVED% %BYTES_SENT%/%PACKETS_SENT% "
    "%DURATION% %CLOSE_REASON% %VERDICT%")

COMMAND: Final = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^()%]*)\))?(?::(\d+))?%")
"""`%NAME%`, `%NAME(ARG)%`, `%NAME(ARG):LEN%` (Envoy's command syntax)."""

Format = Annotated[str, Meta(min_length=1, max_length=4096)]


class LogSink(Base, frozen=True, kw_only=True):
    """Where records go, and the queue in front of it (records beyond it are dropped and
    counted; the request or connection never waits)."""

    kind: Literal["stdout", "file", "otlp"] = "stdout"
    path: Annotated[str, Meta(max_length=4096)] = ""
    """`file`: an absolute path; the file is reopened when it is moved or removed (rotation)."""
    endpoint: Annotated[str, Meta(max_length=2048)] = ""
    """`otlp`: the collector's base URL (`http://host:4318`); records are POSTed to
    `<endpoint>/v1/logs` as OTLP/HTTP protobuf."""
    queue_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """Records waiting to be written at most."""
    flush_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 1000
    """Longest a record waits before it is written (sooner when a batch fills)."""


class LogFilter(Base, frozen=True, kw_only=True):
    """Which requests are logged.  With no condition set every request is; with several, a
    request is logged when it meets any of them."""

    status_min: Annotated[int, Meta(ge=0, le=599)] = 0
    """Log requests whose status is at least this; 0: no such condition."""
    duration_min_ms: Annotated[int, Meta(ge=0, le=86_400_000)] = 0
    """Log requests that took at least this long; 0: no such condition."""
    errors_only: bool = False
    """Log failed requests: status >= 500, a response flag, or no response at all."""


class AccessLogTelemetry(Base, frozen=True, kw_only=True):
    """One record per HTTP request (feature `access-log`)."""

    format: Literal["json", "text"] = "json"
    text_format: Format = DEFAULT_ACCESS_FORMAT
    """The line of `format: text`; Envoy's command syntax (see the module doc)."""
    sink: LogSink = msgspec.field(default_factory=LogSink)
    sample_percent: Annotated[float, Meta(ge=0.0, le=100.0)] = 100.0
    """Share of the requests that pass `filter` which are logged."""
    filter: LogFilter = msgspec.field(default_factory=LogFilter)


class FlowLogTelemetry(Base, frozen=True, kw_only=True):
    """One record per relayed TCP connection when it ends, and an interim record every
    `interval_ms` while it lasts (feature `flow-logs`)."""

    format: Literal["json", "text"] = "json"
    text_format: Format = DEFAULT_FLOW_FORMAT
    sink: LogSink = msgspec.field(default_factory=LogSink)
    interval_ms: Annotated[int, Meta(ge=0, le=86_400_000)] = 60_000
    """Interim records of connections open longer than this, every this long; 0: only when a
    connection ends."""


def _sink_errors(sink: LogSink, path: str) -> list[FieldError]:
    out: list[FieldError] = []
    if sink.kind == "file":
        if not sink.path.startswith("/") or "\0" in sink.path:
            out.append(FieldError(f"{path}.path", "a file sink needs an absolute path"))
    elif sink.path:
        out.append(FieldError(f"{path}.path", "only a file sink has a path"))
    if sink.kind == "otlp":
        from urllib.parse import urlsplit  # only for an OTLP sink (ADR 0068)

        parts = urlsplit(sink.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment or any(c in sink.endpoint for c in "\r\n\0 "):
            out.append(FieldError(f"{path}.endpoint",
                                  "an otlp sink needs an http:// or https:// base URL"))
    elif sink.endpoint:
        out.append(FieldError(f"{path}.endpoint", "only an otlp sink has an endpoint"))
    return out


def format_errors(text: str, known: frozenset[str], path: str) -> list[FieldError]:
    """Commands of a format string that the runtime does not have."""
    out = []
    for m in COMMAND.finditer(text):
        name, arg = m.group(1), m.group(2)
        if name in ("REQ", "RESP") and arg is None:
            out.append(FieldError(path, f"%{name}% needs a header: %{name}(NAME)%"))
        elif name not in known:
            out.append(FieldError(path, f"unknown command %{name}%"))
    return out


def check(telemetry_access: AccessLogTelemetry | None, telemetry_flow: FlowLogTelemetry | None,
          path: str = "telemetry") -> list[FieldError]:
    """What types cannot say: sink fields that go together, format commands."""
    out: list[FieldError] = []
    if telemetry_access is not None:
        p = f"{path}.access_log"
        out += _sink_errors(telemetry_access.sink, f"{p}.sink")
        if telemetry_access.format == "text":
            out += format_errors(telemetry_access.text_format, ACCESS_COMMANDS,
                                 f"{p}.text_format")
    if telemetry_flow is not None:
        p = f"{path}.flow_log"
        out += _sink_errors(telemetry_flow.sink, f"{p}.sink")
        if telemetry_flow.format == "text":
            out += format_errors(telemetry_flow.text_format, FLOW_COMMANDS, f"{p}.text_format")
    return out


__all__ = ["DEFAULT_ACCESS_FORMAT", "DEFAULT_FLOW_FORMAT", "AccessLogTelemetry",
           "FlowLogTelemetry", "LogFilter", "LogSink", "check", "format_errors"]
