"""The access log record of a JSON line sink as its line: written in C, or a struct encoded.

Why a struct: a JSON access log of every request builds one record per request; a dict of 28
fields costs a key insertion per field and is encoded by looking every key up again, while a
`msgspec.Struct` is filled from its arguments in one call and encoded with its keys encoded
once, per class.  `gc=False`: its values are strings, numbers and None, so the records waiting
in a sink's queue are no work for the cycle collector.  The field order is
`proxyconfig/log_fields.ACCESS_FIELDS` (a unit test holds them equal), so the line is byte for
byte the one the dict gave (ADR 0062).  Text formats and OTLP sinks read records as mappings:
`record_dict`.

Since ADR 0076 the line is made when the request ends, by `access_line`: the C encoder
`_aline`, built with the compiled hot path (`scripts/build_native.py`) and used when that
runs, else `encode_line` here, which makes the struct and encodes it.  Both take the same
values (the start time as nanoseconds since the epoch; header fields as the request's bytes,
read as Latin-1; durations as integer microseconds) and give the same bytes (a test holds
them equal); the C encoder hands a record it cannot write the same way (a lone surrogate, a
duration out of its range) to `encode_line`.  The sink then only joins lines
(`json_lines`).  The access log lists a record's values once, as one tuple; the struct, the
line and the dict are all made from it
(`record_fields`: bytes read as Latin-1, microseconds as milliseconds).

Not compiled (`tulle.native.COMPILED`): mypyc does not build classes on msgspec's metaclass;
the compiled access log calls these like any Python callable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from tulle.dataplane.telemetry.starttime import start_time
from tulle.proxyconfig.log_fields import ACCESS_FIELDS

if TYPE_CHECKING:
    from tulle.dataplane.telemetry._aline import Lines


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


_encoder: Final = msgspec.json.Encoder()
_encode: Final = _encoder.encode
_encode_lines: Final = _encoder.encode_lines

_START: Final = ACCESS_FIELDS.index("start_time")
"""Where a record's value is the start time, in integer nanoseconds (the line writes its
text)."""

_DURATIONS: Final = frozenset(
    ACCESS_FIELDS.index(name)
    for name in ("duration", "response_duration", "upstream_duration"))
"""Where a record's values are integer microseconds (the line writes milliseconds)."""


def _field(i: int, v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if i == _START and isinstance(v, int):  # nanoseconds since the epoch
        return start_time(v)
    if v is not None and i in _DURATIONS:
        return float(v) / 1000.0
    return v


def record_fields(values: Sequence[Any]) -> list[Any]:
    """A record's values (`ACCESS_FIELDS`' order, as the access log hands them over: the start
    time in integer nanoseconds, header fields as the request's bytes, durations in integer
    microseconds) as the record's fields: the start time as its text (`start_time`), bytes
    read as Latin-1, durations as milliseconds (3 decimals)."""
    return [_field(i, v) for i, v in enumerate(values)]


def record_dict(values: Sequence[Any]) -> dict[str, Any]:
    """The record as a mapping of its fields (what text formats and OTLP sinks read)."""
    return dict(zip(ACCESS_FIELDS, record_fields(values), strict=True))


def record_of(*values: Any) -> dict[str, Any]:
    """`record_dict` taking the values as `access_line` does: one argument each."""
    return record_dict(values)


_C1: Final = re.compile(rb"\x7f|\xc2[\x80-\x9f]")
"""DEL and the C1 controls in UTF-8 (msgspec escapes only C0)."""


def _c1_escaped(m: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % m.group()[-1]


def escape_c1(line: bytes) -> bytes:
    """`line` (UTF-8 JSON) with DEL and the C1 controls escaped as `\\u00XX`: U+0085 is a line
    break to `str.splitlines`, Java and .NET readers (a header value split a record in two)
    and U+009B a terminal's escape prefix (attack audit, ADR 0099).  As the C encoder does."""
    if b"\x7f" in line or b"\xc2" in line:
        return _C1.sub(_c1_escaped, line)
    return line


def encode_line(*values: Any) -> bytes:
    """One record's JSON line (newline ended), through the struct, from the same values as
    `access_line`.  Raises what msgspec raises for a value it cannot encode."""
    return escape_c1(_encode(AccessRecord(*record_fields(values)))) + b"\n"


def _native_line() -> Callable[..., bytes] | None:
    """The C encoder when the compiled hot path runs (`tulle.native.select`: not with
    `TULLE_PURE`, nor when the build is missing or stale) and it is built; else None."""
    from tulle import native

    if native.select() != "compiled":  # (not mode(): it reads the build note)
        return None
    try:
        from tulle.dataplane.telemetry import _aline
    except ImportError:
        return None
    _aline.set_fallback(encode_line)
    return _aline.access_line


NATIVE_LINE: Final = _native_line()
"""`_aline.access_line` when it runs; None: `encode_line` does the work."""

access_line: Final[Callable[..., bytes]] = NATIVE_LINE or encode_line
"""One record's JSON line from its values (see the module docstring)."""


def line_batch(max_lines: int) -> Lines | None:
    """A C batch that `Lines.access` writes each record's line into, from the same values as
    `access_line` (ADR 0080), holding at most `max_lines`; None where the C encoder does not
    run (the lines are then made one by one and queued)."""
    if NATIVE_LINE is None:
        return None
    from tulle.dataplane.telemetry import _aline

    return _aline.Lines(max_lines)


def json_lines(records: Iterable[Any]) -> bytes:
    """Records as JSON lines, each ended by a newline, in one call: lines already made
    (`access_line`) are joined; structs or dicts are encoded."""
    if isinstance(records, list) and records and isinstance(records[0], bytes):
        return b"".join(records)
    return escape_c1(_encode_lines(records))


__all__ = ["NATIVE_LINE", "AccessRecord", "access_line", "encode_line", "json_lines", "line_batch",
           "record_dict", "record_fields", "record_of"]
