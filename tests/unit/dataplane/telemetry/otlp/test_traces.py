"""Spans encoded by hand read back with the real opentelemetry-proto classes."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from tulle.dataplane.telemetry.otlp.traces import encoder
from tulle.dataplane.telemetry.tracing.span import CLIENT, SERVER, Span

T = b"4bf92f3577b34da6a3ce929d0e0e4736"
S = b"00f067aa0ba902b7"
P = b"a2fb4a1d1a96d312"


def _span(**kw: object) -> Span:
    base: dict[str, object] = dict(
        trace_id=T, span_id=S, parent_id=P, name="GET backend", kind=CLIENT,
        start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_250_000_000,
        attributes=(("http.request.method", "GET"), ("http.response.status_code", 503),
                    ("url.path", "/caf\u00e9"), ("tulle.flag", True)),
        error=True, status_message="UF", tracestate=b"v=1")
    base.update(kw)
    return Span(**base)  # type: ignore[arg-type]


def _decode(data: bytes) -> ExportTraceServiceRequest:
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(data)
    return msg


def test_a_batch_decodes_field_by_field() -> None:
    encode = encoder({"service.name": "web", "service.namespace": "shop"})
    root = _span(parent_id=b"", kind=SERVER, error=False, status_message="", tracestate=b"",
                 span_id=P)
    msg = _decode(encode([_span(), root]))
    [rs] = msg.resource_spans
    assert {a.key: a.value.string_value for a in rs.resource.attributes} == {
        "service.name": "web", "service.namespace": "shop"}
    [ss] = rs.scope_spans
    assert ss.scope.name == "tulle.proxy" and ss.scope.version
    child, parent = ss.spans
    assert child.trace_id == bytes.fromhex(T.decode())
    assert child.span_id == bytes.fromhex(S.decode())
    assert child.parent_span_id == bytes.fromhex(P.decode())
    assert child.trace_state == "v=1"
    assert child.name == "GET backend"
    assert child.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert child.end_time_unix_nano - child.start_time_unix_nano == 250_000_000
    attrs = {a.key: a.value for a in child.attributes}
    assert attrs["http.request.method"].string_value == "GET"
    assert attrs["http.response.status_code"].int_value == 503
    assert attrs["url.path"].string_value == "/caf\u00e9"
    assert attrs["tulle.flag"].bool_value is True
    assert child.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert child.status.message == "UF"
    assert child.flags == 0x301  # sampled, the parent's remoteness known, and remote
    assert parent.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert parent.parent_span_id == b"" and parent.flags == 0x101
    assert parent.status.code == trace_pb2.Status.STATUS_CODE_UNSET


def test_an_end_before_the_start_is_clamped() -> None:
    msg = _decode(encoder({})([_span(end_ns=1)]))
    span = msg.resource_spans[0].scope_spans[0].spans[0]
    assert span.end_time_unix_nano == span.start_time_unix_nano


def test_cached_attributes_encode_as_fresh_ones_and_the_cache_is_bounded() -> None:
    from tulle.dataplane.telemetry.otlp import traces
    from tulle.dataplane.telemetry.otlp.traces import AttributeCache, encode_span

    cache = AttributeCache()
    spans = [_span(attributes=(("n", i % 3), ("b", i % 2 == 0), ("s", f"v{i % 5}")),
                   extra=(("url.path", f"/p{i}"),)) for i in range(20)]
    assert [encode_span(s, cache) for s in spans] == [encode_span(s) for s in spans]
    msg = _decode(encoder({})(spans[:1]))
    got = {a.key for a in msg.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert got == {"n", "b", "s", "url.path"}
    # Values of every type and text that is not ASCII (or not even encodable) read back.
    odd = _span(attributes=(("i", -5), ("f", True), ("s", "\u00e9\u4e2d")),
                extra=(("bad", "a\ud800b"), ("big", 1 << 70)))
    span = _decode(encoder({})([odd])).resource_spans[0].scope_spans[0].spans[0]
    got = {a.key: a.value for a in span.attributes}
    assert got["i"].int_value == -5 and got["f"].bool_value is True
    assert got["s"].string_value == "\u00e9\u4e2d" and got["bad"].string_value == "a\ufffdb"
    assert got["big"].string_value == str(1 << 70)
    small = AttributeCache()
    old = traces.MAX_CACHED
    traces.MAX_CACHED = 4
    try:
        for i in range(50):
            encode_span(_span(attributes=(("k", f"v{i}"),)), small)
            assert len(small._done) <= 4
    finally:
        traces.MAX_CACHED = old
