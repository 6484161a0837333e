"""OTLP logs: an `ExportLogsServiceRequest` for a batch of records, encoded by hand.

Field numbers (opentelemetry/proto/logs/v1/logs.proto, collector/logs/v1):
ExportLogsServiceRequest resource_logs=1; ResourceLogs resource=1 scope_logs=2;
ScopeLogs scope=1 log_records=2; LogRecord time_unix_nano=1 (fixed64) severity_number=2
severity_text=3 body=5 attributes=6 flags=8 (fixed32) trace_id=9 span_id=10
observed_time_unix_nano=11 (fixed64) event_name=12.

A batch is one ResourceLogs (the proxy: `service.name` and friends, encoded once per
exporter) with one ScopeLogs per scope (`tulle.access_log`, `tulle.flow_log`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tulle.dataplane.telemetry.otlp.common import Value, any_value, put_attributes, resource, scope
from tulle.dataplane.telemetry.otlp.wire import (
    put_bytes,
    put_fixed64,
    put_message,
    put_string,
    put_uint,
)

SEVERITY_INFO = 9
"""SeverityNumber INFO."""
SEVERITY_WARN = 13


@dataclass(frozen=True, slots=True)
class LogItem:
    """One record to export."""

    time_ns: int
    """When it happened (Unix nanoseconds): the request's start, the connection's report."""
    attributes: Mapping[str, Value]
    body: str | None = None
    severity: int = SEVERITY_INFO
    trace_id: bytes = b""
    """16 bytes when the record belongs to a trace, else empty."""
    event_name: str = ""


def log_record(item: LogItem, observed_ns: int) -> bytearray:
    buf = bytearray()
    put_fixed64(buf, 1, item.time_ns)
    put_uint(buf, 2, item.severity)
    put_string(buf, 3, "WARN" if item.severity == SEVERITY_WARN else "INFO")
    if item.body is not None:
        put_message(buf, 5, any_value(item.body))
    put_attributes(buf, 6, {k: v for k, v in item.attributes.items() if v is not None})
    if len(item.trace_id) == 16:
        put_bytes(buf, 9, item.trace_id)
    put_fixed64(buf, 11, observed_ns)
    if item.event_name:
        put_string(buf, 12, item.event_name)
    return buf


class LogsEncoder:
    """Encodes batches for one resource and scope (built once per exporter)."""

    __slots__ = ("_resource", "_scope")

    def __init__(self, resource_attributes: Mapping[str, Value], scope_name: str,
                 scope_version: str = "") -> None:
        self._resource = bytes(resource(resource_attributes))
        self._scope = bytes(scope(scope_name, scope_version))

    def encode(self, items: Sequence[LogItem], observed_ns: int) -> bytes:
        scope_logs = bytearray()
        put_message(scope_logs, 1, self._scope)
        for item in items:
            put_message(scope_logs, 2, log_record(item, observed_ns))
        resource_logs = bytearray()
        put_message(resource_logs, 1, self._resource)
        put_message(resource_logs, 2, scope_logs)
        request = bytearray()
        put_message(request, 1, resource_logs)
        return bytes(request)
