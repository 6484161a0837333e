"""OTLP traces: a batch of finished spans as an `ExportTraceServiceRequest`, and its exporter.

Why here: the shared poster (`exporter.py`) is generic over the signal; this module is the
traces signal: the encoding of `tracing.span.Span` (field numbers from
opentelemetry/proto/trace/v1/trace.proto, checked by tests that decode with the real
classes) and the exporter the tracing runtime starts (`TraceExporter`, POST `/v1/traces`).

Field numbers: ExportTraceServiceRequest resource_spans=1; ResourceSpans resource=1
scope_spans=2; ScopeSpans scope=1 spans=2; Span trace_id=1 span_id=2 trace_state=3
parent_span_id=4 name=5 kind=6 start_time_unix_nano=7 end_time_unix_nano=8 attributes=9
status=15 flags=16; Status message=2 code=3 (ERROR=2).

A span's `flags` carries the W3C trace flags (sampled) and says whether its parent came
from another process (`CONTEXT_HAS_IS_REMOTE`, `IS_REMOTE`): a proxy span's parent always
does (the caller's span), so collectors can tell a cross-process edge.
"""

from __future__ import annotations

from binascii import unhexlify
from collections.abc import Callable, Mapping, Sequence

from tulle import __version__
from tulle.dataplane.telemetry.otlp.common import Value, key_value, resource, scope
from tulle.dataplane.telemetry.otlp.exporter import OtlpExporter
from tulle.dataplane.telemetry.otlp.wire import (
    put_fixed32,
    put_fixed64,
    put_message,
    put_string,
    put_uint,
    varint,
)
from tulle.dataplane.telemetry.tracing.span import Span

SIGNAL_PATH = "/v1/traces"
SCOPE_NAME = "tulle.proxy"
STATUS_ERROR = 2
FLAG_SAMPLED = 0x01
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200


MAX_CACHED = 1024
"""Distinct `Span.attributes` sets an encoder keeps encoded (they repeat: one per route,
status and peer, roughly); past this many the cache starts over."""


def put_attribute(buf: bytearray, k: str, v: str | int | bool) -> None:
    """One `attributes = 9` KeyValue field; a string value (nearly all of a span's) is framed
    here in one go rather than through `common.key_value`'s general path."""
    if v.__class__ is not str:
        put_message(buf, 9, key_value(k, v))
        return
    kb = k.encode()
    try:
        vb = v.encode()
    except UnicodeEncodeError:  # a lone surrogate: `put_string`'s replacement
        put_message(buf, 9, key_value(k, v))
        return
    any_value = b"\x0a" + varint(len(vb)) + vb
    kv = b"\x0a" + varint(len(kb)) + kb + b"\x12" + varint(len(any_value)) + any_value
    buf += b"\x4a"  # field 9, length-delimited
    buf += varint(len(kv))
    buf += kv


class AttributeCache:
    """The `attributes = 9` fields of `Span.attributes`, encoded once per distinct set.  Keyed
    by the set itself: each key keeps one value type (the tracer's do), so `True == 1` cannot
    make two sets collide."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done: dict[tuple[tuple[str, str | int | bool], ...], bytes] = {}

    def put(self, buf: bytearray, attributes: tuple[tuple[str, str | int | bool], ...]) -> None:
        done = self._done.get(attributes)
        if done is None:
            fields = bytearray()
            for k, v in attributes:
                put_attribute(fields, k, v)
            done = bytes(fields)
            if len(self._done) >= MAX_CACHED:
                self._done.clear()
            self._done[attributes] = done
        buf += done


def encode_span(span: Span, cache: AttributeCache | None = None) -> bytearray:
    """One `Span` message."""
    buf = bytearray(b"\x0a\x10")  # trace_id = 1: 16 bytes
    buf += unhexlify(span.trace_id)
    buf += b"\x12\x08"  # span_id = 2: 8 bytes
    buf += unhexlify(span.span_id)
    if span.tracestate:
        put_string(buf, 3, span.tracestate.decode("latin-1"))
    if span.parent_id:
        buf += b"\x22\x08"  # parent_span_id = 4: 8 bytes
        buf += unhexlify(span.parent_id)
    put_string(buf, 5, span.name)
    put_uint(buf, 6, span.kind)
    put_fixed64(buf, 7, span.start_ns)
    put_fixed64(buf, 8, max(span.end_ns, span.start_ns))
    if cache is None:
        for k, v in span.attributes:
            put_attribute(buf, k, v)
    else:
        cache.put(buf, span.attributes)
    for k, v in span.extra:
        put_attribute(buf, k, v)
    if span.error:
        status = bytearray()
        if span.status_message:
            put_string(status, 2, span.status_message)
        put_uint(status, 3, STATUS_ERROR)
        put_message(buf, 15, status)
    flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE
    if span.parent_id:
        flags |= FLAG_IS_REMOTE
    put_fixed32(buf, 16, flags)
    return buf


def encoder(resource_attributes: Mapping[str, Value]) -> Callable[[Sequence[Span]], bytes]:
    """The batch encoder of one proxy: its resource and scope are encoded once."""
    scope_msg = scope(SCOPE_NAME, __version__)
    resource_msg = resource(resource_attributes)
    cache = AttributeCache()

    def encode(spans: Sequence[Span]) -> bytes:
        scope_spans = bytearray()
        put_message(scope_spans, 1, scope_msg)
        for span in spans:
            put_message(scope_spans, 2, encode_span(span, cache))
        resource_spans = bytearray()
        put_message(resource_spans, 1, resource_msg)
        put_message(resource_spans, 2, scope_spans)
        out = bytearray()
        put_message(out, 1, resource_spans)
        return bytes(out)

    return encode


class TraceExporter:
    """Spans to a collector over OTLP/HTTP: `add` queues (never blocks, drops when full and
    counts it), a background task POSTs batches (`exporter.OtlpExporter`)."""

    __slots__ = ("closed", "exporter")

    def __init__(self, endpoint: str, resource_attributes: Mapping[str, Value], *,
                 flush_interval: float = 1.0, max_queue: int = 2048,
                 max_batch: int = 512) -> None:
        self.exporter: OtlpExporter[Span] = OtlpExporter(
            endpoint, SIGNAL_PATH, encoder(resource_attributes), max_queue=max_queue,
            max_batch=max_batch, flush_interval=flush_interval)
        self.closed = False
        """Closed and flushed: its counts will not move again."""

    def add(self, span: Span) -> None:
        self.exporter.offer(span)

    def start(self) -> None:
        self.exporter.start()

    async def close(self) -> None:
        try:
            await self.exporter.close()
        finally:
            self.closed = True
