"""OTLP's common messages, encoded by hand, decoded by opentelemetry-proto."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from tulle.dataplane.telemetry.otlp.common import (
    MAX_DEPTH,
    Value,
    any_value,
    key_value,
    resource,
    scope,
)


def _decode(value: Value) -> Any:
    msg = common_pb2.AnyValue()
    msg.ParseFromString(bytes(any_value(value)))
    return msg


def _py(msg: Any) -> Any:
    """An AnyValue as Python, the way a collector would read it."""
    kind = msg.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_py(v) for v in msg.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _py(kv.value) for kv in msg.kvlist_value.values}
    return getattr(msg, kind)


def test_scalars() -> None:
    assert _py(_decode("GET")) == "GET"
    assert _decode(True).WhichOneof("value") == "bool_value"
    assert _py(_decode(False)) is False
    assert _py(_decode(-5)) == -5
    assert _py(_decode(200)) == 200
    assert _py(_decode(1.5)) == 1.5
    assert _py(_decode(b"\x00\xff")) == b"\x00\xff"
    assert _py(_decode(None)) is None
    assert _py(_decode(1 << 70)) == str(1 << 70)  # beyond int64: written as text


def test_nested() -> None:
    value: Value = {"a": [1, "x", {"b": None}], "c": {"d": 2.0}}
    assert _py(_decode(value)) == {"a": [1, "x", {"b": None}], "c": {"d": 2.0}}


def test_depth_is_bounded() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    out = _py(_decode(deep))
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert depth == MAX_DEPTH
    assert isinstance(out, str) and "leaf" in out


def test_key_value_resource_scope() -> None:
    kv = common_pb2.KeyValue()
    kv.ParseFromString(bytes(key_value("http.method", "POST")))
    assert kv.key == "http.method" and kv.value.string_value == "POST"
    res = resource_pb2.Resource()
    res.ParseFromString(bytes(resource({"service.name": "web", "k8s.pod.uid": 3})))
    assert [(a.key, _py(a.value)) for a in res.attributes] == [("service.name", "web"),
                                                               ("k8s.pod.uid", 3)]
    sc = common_pb2.InstrumentationScope()
    sc.ParseFromString(bytes(scope("tulle.access_log", "0.1.0")))
    assert (sc.name, sc.version) == ("tulle.access_log", "0.1.0")


def test_attributes_from_the_cache_decode_as_the_first_time() -> None:
    from opentelemetry.proto.logs.v1 import logs_pb2

    from tulle.dataplane.telemetry.otlp.common import put_attributes

    attrs: dict[str, Value] = {"a": True, "b": 1, "c": "x" * 100, "d": "é", "e": 1.5,
                               "f": None, "g": [1, "y"], "h": "short"}
    for _ in range(2):  # the second pass comes from the cache where it can
        buf = bytearray()
        put_attributes(buf, 6, attrs)
        rec = logs_pb2.LogRecord()
        rec.ParseFromString(bytes(buf))
        got = {kv.key: _py(kv.value) for kv in rec.attributes}
        assert got == {"a": True, "b": 1, "c": "x" * 100, "d": "é", "e": 1.5, "f": None,
                       "g": [1, "y"], "h": "short"}
        assert rec.attributes[0].value.WhichOneof("value") == "bool_value"  # True is not 1
