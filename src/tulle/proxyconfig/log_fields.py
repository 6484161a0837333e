"""The fields of access and flow log records: their JSON names, which are also the `%NAME%`
commands of a text format (upper-cased).  Part of the contract: operators' log queries read
these names, docs/observability/logs.md documents each, a test keeps the runtime's records
and this list in step.

The names follow Envoy's access log commands lower-cased (`response_flags` is
`%RESPONSE_FLAGS%`) where Envoy has one, and VPC flow logs' vocabulary for flows.
"""

from __future__ import annotations

from typing import Final

ACCESS_FIELDS: Final = (
    "start_time", "method", "path", "protocol", "response_code", "response_flags",
    "response_code_details", "bytes_received", "bytes_sent", "duration", "response_duration",
    "upstream_duration", "upstream_host", "upstream_cluster", "route_name",
    "upstream_request_attempt_count", "request_id", "trace_id", "authority", "user_agent",
    "x_forwarded_for", "downstream_remote_address", "requested_server_name",
    "source_principal", "destination_principal", "direction", "listener", "authz",
)
"""One access log record, in this order."""

FLOW_FIELDS: Final = (
    "start_time", "event", "direction", "listener", "transport", "protocol",
    "source_address", "source_port", "destination_address", "destination_port",
    "original_destination", "upstream_host", "upstream_cluster", "source_workload",
    "source_principal", "destination_workload", "destination_principal", "bytes_received",
    "bytes_sent", "packets_received", "packets_sent", "upstream_packets_sent",
    "upstream_packets_received", "duration", "close_reason", "verdict",
)
"""One flow log record, in this order."""

ACCESS_COMMANDS: Final = frozenset({f.upper() for f in ACCESS_FIELDS}
                                   | {"REQ", "RESPONSE_FLAGS_LONG"})
"""Commands of an access log text format: every field, `%REQ(HEADER)%` (Envoy's, with
`?ALT` and `:LEN`), and `%RESPONSE_FLAGS_LONG%`."""
FLOW_COMMANDS: Final = frozenset(f.upper() for f in FLOW_FIELDS)
