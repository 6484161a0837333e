"""The request stream traces a request when its listener does: the context is written before
the upstream is opened, the record carries the ids, and the span is made once, at `done`,
however the request ended (answered, answered locally, reset)."""

from __future__ import annotations

from tests.unit.dataplane.http.test_stream import Cluster, Conn, Stream, ok

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.listeners.dispatch import Decision
from tulle.dataplane.telemetry.tracing.span import Span
from tulle.dataplane.telemetry.tracing.tracer import Tracer
from tulle.proxyconfig.tracing import Tracing

T = b"4bf92f3577b34da6a3ce929d0e0e4736"
P = b"00f067aa0ba902b7"


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def add(self, span: Span) -> None:
        self.spans.append(span)


def traced(available: bool = True, percent: float = 100.0,
           headers: list[tuple[bytes, bytes]] | None = None
           ) -> tuple[Stream, Cluster, Sink, RequestHead]:
    sink = Sink()
    conn = Conn()
    conn.ctx.tracer = Tracer(Tracing(sampling_percent=percent), sink).for_listener(
        "l", "outbound")
    cluster = Cluster([], available)
    head = RequestHead(b"GET", b"/a?b=1", b"svc", b"http", list(headers or []), 0)
    stream = Stream(conn, head, True)
    conn.ctx.routed_to = Decision(cluster, "c", 0, stats=conn.ctx.st)  # type: ignore[arg-type]
    stream.dispatch()
    return stream, cluster, sink, head


def test_the_upstream_sees_the_proxy_span_and_the_span_is_made_at_done() -> None:
    s, cluster, sink, head = traced(headers=[(b"traceparent", b"00-" + T + b"-" + P + b"-01")])
    assert s.trace_id == T.decode() and len(s.span_id) == 16
    assert (b"traceparent", b"00-" + T + b"-" + s.span_id.encode() + b"-01") in head.headers
    assert sink.spans == []  # nothing before done
    s.on_response_head(ok(), True)
    [span] = sink.spans
    assert (span.trace_id, span.parent_id, span.span_id) == (T, P, s.span_id.encode())
    assert dict(span.attributes)["http.response.status_code"] == 200
    assert dict(span.attributes)["upstream_address"] == "10.0.0.9:8080"
    assert s.tried is None  # released at done: no stream <-> exchange cycle left
    s.record()
    assert len(sink.spans) == 1  # once


def test_a_local_answer_and_a_reset_make_error_spans() -> None:
    s, _, sink, _ = traced(available=False)
    assert s.client == [("local", 503, b"no healthy endpoint in cluster 'c'\n")]
    [span] = sink.spans
    assert span.error and span.status_message == "UH"
    s, _, sink, _ = traced()
    s.downstream_reset()
    [span] = sink.spans
    assert span.error and span.status_message == "DC"
    assert "http.response.status_code" not in dict(span.attributes)


def test_an_unsampled_request_has_ids_for_the_log_and_no_span() -> None:
    s, _, sink, head = traced(percent=0.0)
    s.on_response_head(ok(), True)
    assert len(s.trace_id) == 32 and sink.spans == []
    assert [v[-2:] for n, v in head.headers if n == b"traceparent"] == [b"00"]


def test_a_listener_that_does_not_trace_pays_nothing_and_says_so() -> None:
    conn = Conn()
    s = Stream(conn, RequestHead(b"GET", b"/", b"svc", b"http", [], 0), True)
    conn.ctx.routed_to = Decision(Cluster([]), "c", 0, stats=conn.ctx.st)  # type: ignore[arg-type]
    s.dispatch()
    assert s.trace is None and s.tried is None and (s.trace_id, s.span_id) == ("", "")
    assert not any(n in (b"traceparent", b"b3") for n, _ in s.head.headers)
