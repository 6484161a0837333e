"""Tracing on the request path: read the caller's context, decide, write ours, make the span.

Why here and not as a route filter: like `x-request-id`, trace context is the connection
manager's business (Envoy's HCM does it, not a filter): every request of a listener is traced
or none is, whatever its route, and a route with no filters keeps its plain path.  The request
stream (`http/stream.py`) calls `ListenerTracer.start` right after the forwarding headers are
set, before routing (so the route's filters and the upstream see the proxy's context), and
`ListenerTracer.finish` when it records the request: the span is an observer of `done`.

Per request, sampled or not: one pass over the headers (`propagation.extract`), a sampling
decision when the caller made none (a new trace's follows from its random id, `_cutoff`; a
caller's context without a decision takes a random draw), one random span id (and trace id
for a new trace), the propagation headers written.  Only a sampled request reads the wall
clock, builds attributes and a `Span`, and hands it to the sink (a queue).

Which span: the proxy makes one span per request.  On an `outbound` listener (the local app
calls out) it is a CLIENT span, on an `inbound` one a SERVER span, as Envoy and Istio make
them; the upstream request carries the proxy's span as its parent, so the chain reads
app → client proxy → server proxy → app.
"""

from __future__ import annotations

import os
import random
import time
from binascii import hexlify
from typing import TYPE_CHECKING, Final, Protocol

from tulle.dataplane.telemetry import clip
from tulle.dataplane.telemetry.grpc_status import SERVER_ERRORS, call_status, is_grpc
from tulle.dataplane.telemetry.tracing.propagation import (
    FORMATS,
    NO_DECISION,
    TRACE_HEADERS,
    W3C,
    inject,
    read,
    written,
)
from tulle.dataplane.telemetry.tracing.span import CLIENT, SERVER, Attributes, Span, SpanSink

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.proxyconfig.tracing import Tracing

_rand: Final = random.random
_urandom = os.urandom  # (not Final: a test replaces it)
_IDS_PER_DRAW: Final = 128
_IDS_CHARS: Final = 48 * _IDS_PER_DRAW
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16


def _fresh_ids() -> bytes:
    """Random lower-case hex for `_IDS_PER_DRAW` new traces: one read of the kernel's
    generator (`os.urandom`; W3C asks trace ids to be random; a worker builds its tracers
    after the fork, so no two processes share a draw) and one hexlify.  A draw per request
    cost a big integer, its bytes and their hex each time; 64 at a time from
    `random.getrandbits` still built and took apart a 12,288-bit integer (~1,200
    instructions per request under callgrind), this ~370 (ADR 0076)."""
    return hexlify(_urandom(24 * _IDS_PER_DRAW))


def _nonzero(trace_id: bytes, span_id: bytes) -> tuple[bytes, bytes]:
    """The ids with an all-zero one made valid (its last digit 1: a 2^-64 case)."""
    if trace_id == _ZERO_TRACE:
        trace_id = _ZERO_TRACE[:31] + b"1"
    if span_id == _ZERO_SPAN:
        span_id = _ZERO_SPAN[:15] + b"1"
    return trace_id, span_id


def _cutoff(threshold: float) -> bytes:
    """The new traces a `threshold` share samples: those whose id, 32 lower-case hex digits,
    is below this.  The rule of OpenTelemetry's TraceIdRatioBased sampler, read on the whole
    id where the SDKs read its low 64 bits (the proxy's ids are random throughout, so the
    share is `threshold` either way; an SDK may decide an id otherwise).  The decision is one
    bytes comparison, not a random draw per request, and two Tulle proxies with the same rate
    decide an id alike."""
    if threshold >= 1.0:
        return b"g"  # above every id: every hex digit is below `g`
    if threshold <= 0.0:
        return b""  # nothing is below the empty string
    return b"%032x" % min(int(threshold * (1 << 128)), (1 << 128) - 1)


class RequestTrace:
    """One request's trace context: what the access log reads (`trace_id`, `span_id`) and
    what its span is made from."""

    __slots__ = ("parent_id", "sampled", "span_id", "start_ns", "trace_id", "tracer",
                 "tracestate")

    def __init__(self, tracer: ListenerTracer, trace_id: bytes, span_id: bytes,
                 parent_id: bytes, sampled: bool, tracestate: bytes, start_ns: int) -> None:
        self.tracer = tracer
        """The listener's tracer the request started on (it makes the span, even after a
        swap)."""
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.start_ns = start_ns
        """Unix nanoseconds at the head (sampled requests only; 0 otherwise)."""


class Tracer:
    """The `telemetry.tracing` section compiled, once per snapshot that changes it."""

    __slots__ = ("cutoff", "drop", "formats", "key", "sink", "threshold")

    def __init__(self, cfg: Tracing, sink: SpanSink | None) -> None:
        self.key: tuple[object, ...] | None = None
        """What it was built from (`runtime.TracingRuntime` compares it)."""
        self.threshold = cfg.sampling_percent / 100.0
        """A request whose caller sent a context without a decision is sampled when a draw in
        [0, 1) is below (the caller's id may not be random: a 64-bit B3 id padded with
        zeros)."""
        self.cutoff = _cutoff(self.threshold)
        """A new trace is sampled when its id is below (`_cutoff`)."""
        formats = 0
        for name in cfg.propagation:
            formats |= FORMATS[name]
        self.formats = formats
        self.drop = written(formats)
        self.sink = sink
        """Where spans go; None: context is propagated, no span is made."""

    def for_listener(self, name: str, direction: str) -> ListenerTracer:
        return ListenerTracer(self, name, SERVER if direction == "inbound" else CLIENT)


class ListenerTracer:
    """A tracer as one listener uses it (the span kind follows the listener's direction)."""

    __slots__ = ("at", "cutoff", "drop", "formats", "ids", "kind", "listener", "sink",
                 "threshold", "tracer")

    def __init__(self, tracer: Tracer, listener: str, kind: int) -> None:
        self.tracer = tracer
        self.ids = b""
        """Random hex for the ids of new traces, 48 characters (a trace id and a span id) per
        request, drawn `_IDS_PER_DRAW` requests at a time (ADR 0066)."""
        self.at = _IDS_CHARS
        """Where the next request's ids start in `ids` (at the end: draw first)."""
        self.listener = listener
        self.kind = kind
        self.formats = tracer.formats
        self.drop = tracer.drop
        self.threshold = tracer.threshold
        self.cutoff = tracer.cutoff
        self.sink = tracer.sink

    def start(self, head: RequestHead) -> RequestTrace:
        """Read the request's context, decide, and write the proxy's on the head."""
        headers = head.headers
        found: list[tuple[bytes, bytes]] | None = None
        for h in headers:  # (usually none or one)
            name = h[0]
            c = name[0] if name else 0
            # A cheap look before the set lookup (which hashes the name): every name of
            # `TRACE_HEADERS` starts with `t`, `b` or `x-b`.
            if ((c in (116, 98) or (c == 120 and len(name) > 2 and name[2] == 98))
                    and name in TRACE_HEADERS):
                if found is None:
                    found = [h]
                else:
                    found.append(h)
        at = self.at
        if at >= _IDS_CHARS:
            self.ids = _fresh_ids()
            at = 0
        ids = self.ids
        self.at = at + 48
        span_id = ids[at + 32:at + 48]
        if found is None:  # a new trace, the common case at the caller's proxy
            trace_id = ids[at:at + 32]
            if span_id == _ZERO_SPAN or trace_id == _ZERO_TRACE:  # W3C forbids all-zero ids
                trace_id, span_id = _nonzero(trace_id, span_id)
            sampled = trace_id < self.cutoff
            if self.formats == W3C:
                headers.append((b"traceparent", b"".join(
                    (b"00-", trace_id, b"-", span_id, b"-01" if sampled else b"-00"))))
            else:
                inject(headers, self.formats, trace_id, span_id, b"", sampled, b"",
                       self.drop, False)
            return RequestTrace(self, trace_id, span_id, b"", sampled, b"",
                                time.time_ns() if sampled else 0)
        got = read(found)
        if got is not None and got.trace_id:
            trace_id, parent_id, tracestate = got.trace_id, got.span_id, got.tracestate
        else:
            trace_id = ids[at:at + 32]
            parent_id = tracestate = b""
        if span_id == _ZERO_SPAN or trace_id == _ZERO_TRACE:
            trace_id, span_id = _nonzero(trace_id, span_id)
        decision = NO_DECISION if got is None else got.sampled
        sampled = (_rand() < self.threshold) if decision == NO_DECISION else decision == 1
        inject(headers, self.formats, trace_id, span_id, parent_id, sampled, tracestate,
               self.drop, True)
        return RequestTrace(self, trace_id, span_id, parent_id, sampled, tracestate,
                            time.time_ns() if sampled else 0)

    def finish(self, trace: RequestTrace, record: SpanRecord) -> None:
        """The request is done: its span to the sink, when it was sampled.  Both ends are
        wall-clock reads (the loop's clock is per iteration, milliseconds under uvloop: too
        coarse for a span nested in another)."""
        sink = self.sink
        if not trace.sampled or sink is None:
            return
        status = record.status
        head = record.head
        method = _METHODS.get(head.method, OTHER_METHOD)
        cluster = record.cluster
        kind = self.kind
        error = status == 0 or status >= 500 or (kind == CLIENT and status >= 400)
        grpc = ""
        if head.version == b"2" and is_grpc(head.headers):
            # A gRPC call fails with HTTP 200: its own status decides (ADR 0107).
            grpc = call_status(record.grpc_status, status, record.flags)
            if grpc != "0" and (kind == CLIENT or grpc in SERVER_ERRORS):
                error = True
        start = trace.start_ns
        common, extra = attributes(record, self.listener, method, grpc)
        sink.add(Span(
            trace_id=trace.trace_id, span_id=trace.span_id, parent_id=trace.parent_id,
            name=_span_name(method, cluster), kind=kind,
            start_ns=start, end_ns=max(start, time.time_ns()),
            attributes=common, extra=extra, error=error, status_message=record.flags,
            tracestate=trace.tracestate))


class SpanRecord(Protocol):
    """What `finish` reads of the request (`stream.RequestStream` has it)."""

    head: RequestHead
    status: int
    flags: str
    cluster: str
    grpc_status: str

    @property
    def facts(self) -> ConnectionFacts: ...

    @property
    def upstream_host(self) -> str: ...


def _header(head: RequestHead, name: bytes) -> bytes:
    for n, v in head.headers:
        if n == name:
            return v
    return b""


OTHER_METHOD: Final = "_OTHER"
"""`http.request.method` of a method outside `_METHODS` (OTel's HTTP conventions); the span
is then named `HTTP` and the method itself is `http.request.method_original`."""
_METHODS: Final = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")}
"""The methods OTel's HTTP conventions know (RFC 9110's and PATCH).  HTTP/2's `:method` is
any token a client likes: naming spans after it would give tracing backends, which index span
names, one name per request (ADR 0103)."""


def _span_name(method: str, cluster: str) -> str:
    """`"<METHOD> <cluster>"` (low cardinality: both from fixed sets); `HTTP` stands for a
    method outside them."""
    name = "HTTP" if method == OTHER_METHOD else method
    return name if cluster == "-" else f"{name} {cluster}"


def attributes(record: SpanRecord, listener: str, method: str,
               grpc: str = "") -> tuple[Attributes, Attributes]:
    """OTel HTTP semantic conventions (and `rpc.grpc.status_code`, `grpc`, for a gRPC call),
    then the proxy's own (Envoy's names where it has one,
    so queries written for Envoy/Istio spans work): (those whose values repeat from request
    to request, those that rarely do: `Span.attributes`, `Span.extra`).  Values the client
    chose are cut to `clip`'s bounds (ADR 0103): a queued span costs a bounded size."""
    head = record.head
    path = clip.cut_text(head.path.split(b"?", 1)[0].decode("latin-1"), clip.SPAN_PATH)
    authority = clip.cut_text(head.authority.decode("latin-1"), clip.FIELD)
    host, _, port = authority.rpartition(":") if authority[-1:].isdigit() else (authority, "", "")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    out: list[tuple[str, str | int | bool]] = [
        ("http.request.method", method),
        ("url.scheme", head.scheme.decode("latin-1")),
        ("server.address", host or authority),
        ("network.protocol.name", "http"),
        ("network.protocol.version", head.version.decode("latin-1")),
    ]
    if port:
        out.append(("server.port", int(port)))
    if record.status:
        out.append(("http.response.status_code", record.status))
    if grpc:
        out.append(("rpc.grpc.status_code", int(grpc)))
    facts = record.facts
    extra: list[tuple[str, str | int | bool]] = [("url.path", path)]
    if method == OTHER_METHOD:
        extra.append(("http.request.method_original",
                      clip.cut_text(head.method.decode("latin-1"), clip.FIELD)))
    if facts.peer is not None:
        extra.append(("client.address", facts.peer[0]))
    agent = _header(head, b"user-agent")
    if agent:
        extra.append(("user_agent.original", clip.cut_text(agent.decode("latin-1"), clip.AGENT)))
    request_id = _header(head, b"x-request-id")
    if request_id:
        extra.append(("guid:x-request-id",
                      clip.cut_text(request_id.decode("latin-1"), clip.FIELD)))
    out.append(("upstream_cluster", record.cluster))
    upstream = record.upstream_host
    if upstream:
        out.append(("upstream_address", upstream))
    if record.flags:
        out.append(("response_flags", record.flags))
    if facts.peer_identity:
        out.append(("tulle.peer.identity", facts.peer_identity))
    out.append(("tulle.listener", listener))
    return tuple(out), tuple(extra)
