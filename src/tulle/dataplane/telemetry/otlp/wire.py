"""Protobuf's wire format, the encoding half only: what OTLP export requests need.

Why by hand: see the package docstring.  Field numbers and types come from
opentelemetry-proto; the tests decode what these functions produce with the real generated
classes, so a wrong tag or wire type fails there.

Each `put_*` appends one field (key then value) to a `bytearray`; a field holding its
default value is still written when called (the caller skips defaults it does not want to
send; proto3 parsers accept both).  Nested messages are encoded into their own buffer first
and appended with `put_message` (length-delimited), which is how protobuf frames them.
Integers out of their type's range raise `ValueError`: an encoder must never write a value
a peer would read back as something else.
"""

from __future__ import annotations

import struct

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack

# The keys of fields 1..31 of each wire type, precomputed (OTLP's fields are all below 32).
_KEYS: dict[tuple[int, int], bytes] = {}


def varint(value: int) -> bytes:
    """An unsigned integer (0 <= value < 2**64) as a base-128 varint."""
    if value < 0 or value > _U64:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type."""
    k = _KEYS.get((field, wire_type))
    if k is not None:
        return k
    if field < 1 or field > 0x1FFFFFFF or wire_type not in (VARINT, I64, LEN, I32):
        raise ValueError(f"bad field key: {field}/{wire_type}")
    return varint((field << 3) | wire_type)


_KEYS.update({(f, t): varint((f << 3) | t) for f in range(1, 32)
              for t in (VARINT, I64, LEN, I32)})


def put_uint(buf: bytearray, field: int, value: int) -> None:
    """uint32/uint64/enum (non-negative) as a varint field."""
    buf += key(field, VARINT)
    buf += varint(value)


def put_int64(buf: bytearray, field: int, value: int) -> None:
    """int64 (two's complement varint: a negative value takes ten bytes, as protobuf)."""
    if value < _I64_MIN or value > _I64_MAX:
        raise ValueError(f"int64 out of range: {value}")
    buf += key(field, VARINT)
    buf += varint(value & _U64)


def put_bool(buf: bytearray, field: int, value: bool) -> None:
    buf += key(field, VARINT)
    buf.append(1 if value else 0)


def put_fixed64(buf: bytearray, field: int, value: int) -> None:
    """fixed64 (timestamps in nanoseconds)."""
    if value < 0 or value > _U64:
        raise ValueError(f"fixed64 out of range: {value}")
    buf += key(field, I64)
    buf += _pack_q(value)


def put_fixed32(buf: bytearray, field: int, value: int) -> None:
    if value < 0 or value > 0xFFFFFFFF:
        raise ValueError(f"fixed32 out of range: {value}")
    buf += key(field, I32)
    buf += _pack_i(value)


def put_double(buf: bytearray, field: int, value: float) -> None:
    buf += key(field, I64)
    buf += _pack_d(value)


def put_bytes(buf: bytearray, field: int, value: bytes | bytearray) -> None:
    """bytes, or an already encoded message (length-delimited)."""
    buf += key(field, LEN)
    buf += varint(len(value))
    buf += value


put_message = put_bytes
"""A nested message, encoded into its own buffer first."""


def put_string(buf: bytearray, field: int, value: str) -> None:
    """A string as UTF-8; a lone surrogate (which UTF-8 cannot carry, and a protobuf parser
    would refuse) becomes U+FFFD, so one odd value never makes a whole batch unreadable."""
    try:
        data = value.encode()
    except UnicodeEncodeError:
        data = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    put_bytes(buf, field, data)


# -- reading: only what an export *response* needs (partial_success counts) ------------------

def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint at `pos`: (value, position after it).  ValueError when cut short or longer
    than ten bytes (a peer's bytes: never loop past them, never build a huge int)."""
    result = 0
    shift = 0
    end = len(data)
    while shift < 70:
        if pos >= end:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7
    raise ValueError("varint longer than ten bytes")


def fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """The top-level fields of a message: (number, wire type, value); a varint or fixed
    field's value is an int, a length-delimited one's its bytes.  ValueError on malformed
    input (a group wire type, a length past the end).  At most one entry per byte of input,
    so the work is bounded by the input, which the caller bounds."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    end = len(data)
    while pos < end:
        k, pos = read_varint(data, pos)
        field, wire_type = k >> 3, k & 7
        if field == 0:
            raise ValueError("field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == I64:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            value = int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wire_type == I32:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            value = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        elif wire_type == LEN:
            n, pos = read_varint(data, pos)
            if n > end - pos:
                raise ValueError("length past the end")
            value = bytes(data[pos:pos + n])
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        out.append((field, wire_type, value))
    return out
