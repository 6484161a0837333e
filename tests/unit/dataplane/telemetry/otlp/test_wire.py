"""The hand-rolled protobuf encoder, read back by the real protobuf runtime."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.logs.v1 import logs_pb2

from tulle.dataplane.telemetry.otlp import wire


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_varint_round_trips(n: int) -> None:
    data = wire.varint(n)
    assert wire.read_varint(data, 0) == (n, len(data))


def test_varint_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        wire.varint(-1)
    with pytest.raises(ValueError):
        wire.varint(1 << 64)
    with pytest.raises(ValueError):
        wire.put_int64(bytearray(), 1, 1 << 63)
    with pytest.raises(ValueError):
        wire.put_fixed64(bytearray(), 1, -1)
    with pytest.raises(ValueError):
        wire.key(0, wire.VARINT)


def test_fields_read_by_protobuf() -> None:
    # LogRecord: fixed64 1 and 11, enum 2, string 3, bytes 9, fixed32 8 (field 11: a key
    # byte > 0x7f is still one byte; field numbers 16+ take two, checked below).
    buf = bytearray()
    wire.put_fixed64(buf, 1, 1_700_000_000_123_456_789)
    wire.put_uint(buf, 2, 9)
    wire.put_string(buf, 3, "INFO \u00e9\ud800")  # a lone surrogate becomes U+FFFD
    wire.put_fixed32(buf, 8, 1)
    wire.put_bytes(buf, 9, bytes(range(16)))
    wire.put_fixed64(buf, 11, 5)
    rec = logs_pb2.LogRecord()
    rec.ParseFromString(bytes(buf))
    assert rec.time_unix_nano == 1_700_000_000_123_456_789
    assert rec.severity_number == 9
    assert rec.severity_text == "INFO \u00e9\ufffd"
    assert rec.flags == 1
    assert rec.trace_id == bytes(range(16))
    assert rec.observed_time_unix_nano == 5


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.floats(allow_nan=False),
       st.booleans())
def test_signed_double_bool(i: int, d: float, b: bool) -> None:
    # FieldOptions has none of these; use descriptor_pb2's UninterpretedOption:
    # negative_int_value (int64) = 5, double_value = 6; and FieldOptions.packed (bool) = 2.
    buf = bytearray()
    wire.put_int64(buf, 5, i)
    wire.put_double(buf, 6, d)
    msg = descriptor_pb2.UninterpretedOption()
    msg.ParseFromString(bytes(buf))
    assert msg.negative_int_value == i
    assert msg.double_value == d
    buf = bytearray()
    wire.put_bool(buf, 2, b)
    opts = descriptor_pb2.FieldOptions()
    opts.ParseFromString(bytes(buf))
    assert opts.packed is b


def test_two_byte_keys() -> None:
    # FieldOptions.features is field 21 (a message): a two-byte key.
    assert wire.key(21, wire.LEN) == bytes([0xAA, 0x01])
    assert wire.key(16, wire.VARINT) == bytes([0x80, 0x01])
    assert wire.key(3000, wire.LEN) == wire.varint(3000 << 3 | 2)


@pytest.mark.parametrize("data", [
    b"\x08",                      # a key, then nothing
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an eleven-byte varint
    b"\x0a\x05abc",               # length past the end
    b"\x09\x01\x02",              # fixed64 cut short
    b"\x0d\x01",                  # fixed32 cut short
    b"\x0b",                      # group start: not supported
    b"\x00\x00",                  # field 0
])
def test_fields_refuse_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        wire.fields(data)


@given(st.binary(max_size=64))
def test_fields_never_crash_otherwise(data: bytes) -> None:
    try:
        out = wire.fields(data)
    except ValueError:
        return
    assert len(out) <= len(data)


def test_fields_read_what_put_wrote() -> None:
    buf = bytearray()
    wire.put_uint(buf, 1, 300)
    wire.put_bytes(buf, 2, b"xy")
    wire.put_fixed32(buf, 3, 7)
    wire.put_fixed64(buf, 4, 8)
    assert wire.fields(bytes(buf)) == [(1, 0, 300), (2, 2, b"xy"), (3, 5, 7), (4, 1, 8)]
