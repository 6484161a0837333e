"""OTLP's common messages (opentelemetry/proto/common/v1, resource/v1), encoded by hand.

`AnyValue` is the one value type of OTLP attributes and log bodies: a string, bool, int,
double, bytes, a list of values or a string-keyed map of values.  `any_value` takes the
Python equivalents (`None` is an empty AnyValue, which OTLP reads as "no value"), so a
log record built as a dict is encoded as it is.  Depth is bounded (`MAX_DEPTH`): a value
nested deeper, or of a type OTLP has no slot for, is written as its `str()`, never an error.

Field numbers (common.proto): AnyValue string_value=1 bool_value=2 int_value=3
double_value=4 array_value=5 kvlist_value=6 bytes_value=7; ArrayValue/KeyValueList
values=1; KeyValue key=1 value=2; InstrumentationScope name=1 version=2 attributes=3;
Resource attributes=1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

from tulle.dataplane.telemetry.otlp.wire import (
    LEN,
    key,
    put_bool,
    put_bytes,
    put_double,
    put_int64,
    put_message,
    put_string,
    varint,
)

Value: TypeAlias = ("str | bool | int | float | bytes | Sequence[Value] | Mapping[str, Value]"
                    " | None")
"""What `any_value` accepts."""

MAX_DEPTH = 8
"""Nesting of lists/maps written as such; deeper levels are written as text."""

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


def any_value(value: Value, depth: int = 0) -> bytearray:
    """An AnyValue message for a Python value."""
    buf = bytearray()
    if value is None:
        return buf
    if isinstance(value, str):
        put_string(buf, 1, value)
    elif isinstance(value, bool):  # before int: bool is an int in Python
        put_bool(buf, 2, value)
    elif isinstance(value, int):
        if _I64_MIN <= value <= _I64_MAX:
            put_int64(buf, 3, value)
        else:
            put_string(buf, 1, str(value))
    elif isinstance(value, float):
        put_double(buf, 4, value)
    elif isinstance(value, (bytes, bytearray)):
        put_bytes(buf, 7, value)
    elif depth >= MAX_DEPTH:
        put_string(buf, 1, str(value))
    elif isinstance(value, Mapping):
        kvs = bytearray()
        for k, v in value.items():
            put_message(kvs, 1, key_value(str(k), v, depth + 1))
        put_message(buf, 6, kvs)
    elif isinstance(value, (list, tuple)):
        items = bytearray()
        for v in value:
            put_message(items, 1, any_value(v, depth + 1))
        put_message(buf, 5, items)
    else:
        put_string(buf, 1, str(value))
    return buf


def key_value(k: str, value: Value, depth: int = 0) -> bytearray:
    """A KeyValue message."""
    buf = bytearray()
    put_string(buf, 1, k)
    put_message(buf, 2, any_value(value, depth))
    return buf


_KEYS: dict[str, bytes] = {}
"""A KeyValue's `key` field, encoded, per key (records repeat the same few dozen keys)."""
_PAIRS: dict[tuple[int, str, type, object], bytes] = {}
"""Whole framed KeyValues of short scalar values seen before (`direction: outbound`, a
status, a route name): most attributes of a record repeat; bounded, cleared when full."""
_PAIRS_MAX = 4096


def _key(k: str) -> bytes:
    b = _KEYS.get(k)
    if b is None:
        buf = bytearray()
        put_string(buf, 1, k)
        b = bytes(buf)
        if len(_KEYS) < _PAIRS_MAX:
            _KEYS[k] = b
    return b


def attribute(field: int, k: str, v: Value) -> bytes:
    """One KeyValue as field `field` of its message (key, length, KeyValue), encoded; the
    scalar cases without building buffers, repeated pairs from a bounded cache (a record's
    28 attributes cost a few dict lookups)."""
    t = type(v)
    cacheable = t is int or t is bool or (isinstance(v, str) and len(v) <= 64)
    if cacheable:
        hit = _PAIRS.get((field, k, t, v))
        if hit is not None:
            return hit
    if isinstance(v, str) and v.isascii():  # (the common case: UTF-8 is the bytes themselves)
        data = v.encode()
        av = b"\x0a" + varint(len(data)) + data
        kv = _key(k) + b"\x12" + varint(len(av)) + av
    else:
        kv = bytes(key_value(k, v))
    out = key(field, LEN) + varint(len(kv)) + kv
    if cacheable:
        if len(_PAIRS) >= _PAIRS_MAX:
            _PAIRS.clear()
        _PAIRS[(field, k, t, v)] = out
    return out


def put_attributes(buf: bytearray, field: int, attributes: Mapping[str, Value]) -> None:
    """A repeated KeyValue field (`attributes`), one entry per key, in the mapping's order."""
    buf += b"".join([attribute(field, k, v) for k, v in attributes.items()])


def resource(attributes: Mapping[str, Value]) -> bytearray:
    """A Resource message (`service.name`, `host.name`, ...)."""
    buf = bytearray()
    put_attributes(buf, 1, attributes)
    return buf


def scope(name: str, version: str = "") -> bytearray:
    """An InstrumentationScope message (who produced the records: `tulle.access_log`)."""
    buf = bytearray()
    put_string(buf, 1, name)
    if version:
        put_string(buf, 2, version)
    return buf
