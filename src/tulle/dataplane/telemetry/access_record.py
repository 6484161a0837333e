"""The access log record of a JSON line sink, as a struct: built and encoded without a dict.

Why a struct: a JSON access log of every request builds one record per request; a dict of 28
fields costs a key insertion per field and is encoded by looking every key up again, while a
`msgspec.Struct` is filled from its arguments in one call and encoded with its keys encoded
once, per class.  `gc=False`: its values are strings, numbers and None, so the records waiting
in a sink's queue are no work for the cycle collector.  The field order is
`proxyconfig/log_fields.ACCESS_FIELDS` (a unit test holds them equal), so the line is byte for
byte the one the dict gave (ADR 0062).  Text formats and OTLP sinks read records as mappings
and still get the dict (`access_log.AccessLogger.record`).

Not compiled (`tulle.native.COMPILED`): mypyc does not build classes on msgspec's metaclass;
the compiled access log calls the constructor like any Python callable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec


class AccessRecord(msgspec.Struct, gc=False):
    start_time: str
    method: str | None
    path: str | None
    protocol: str
    response_code: int
    response_flags: str
    response_code_details: str | None
    bytes_received: int
    bytes_sent: int
    duration: float
    response_duration: float | None
    upstream_duration: float | None
    upstream_host: str | None
    upstream_cluster: str | None
    route_name: str | None
    upstream_request_attempt_count: int
    request_id: str | None
    trace_id: str | None
    authority: str | None
    user_agent: str | None
    x_forwarded_for: str | None
    downstream_remote_address: str | None
    requested_server_name: str | None
    source_principal: str | None
    destination_principal: str | None
    direction: str
    listener: str
    authz: str | None


_encode_lines = msgspec.json.Encoder().encode_lines


def json_lines(records: Iterable[Any]) -> bytes:
    """Records (structs or dicts) as JSON lines, each ended by a newline, in one call."""
    return _encode_lines(records)


__all__ = ["AccessRecord", "json_lines"]
