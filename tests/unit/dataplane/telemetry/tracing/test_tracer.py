"""Sampling decisions, the context written upstream, and the span made for a sampled request."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.telemetry.tracing import tracer as tracer_mod
from tulle.dataplane.telemetry.tracing.propagation import extract
from tulle.dataplane.telemetry.tracing.span import CLIENT, SERVER, Span
from tulle.dataplane.telemetry.tracing.tracer import Tracer
from tulle.proxyconfig.tracing import Tracing

T = b"4bf92f3577b34da6a3ce929d0e0e4736"
S = b"00f067aa0ba902b7"


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def add(self, span: Span) -> None:
        self.spans.append(span)


@dataclass
class Record:
    head: RequestHead
    status: int = 200
    flags: str = ""
    cluster: str = "backend"
    facts: ConnectionFacts = field(default_factory=lambda: ConnectionFacts(
        "out", "outbound", ("10.0.0.7", 5555)))
    upstream_host: str = "127.0.0.1:8080"


def _head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/api/items?id=3", b"shop.example:8080", b"http",
                       [(b"host", b"shop.example:8080"), *headers])


def _tracer(percent: float = 100.0, propagation: tuple[str, ...] = ("w3c",),
            direction: str = "outbound") -> tuple[tracer_mod.ListenerTracer, Sink]:
    sink = Sink()
    cfg = Tracing(sampling_percent=percent, propagation=list(propagation))  # type: ignore[arg-type]
    return Tracer(cfg, sink).for_listener("out", direction), sink


def test_a_new_trace_gets_ids_and_the_upstream_carries_the_proxy_span_as_parent() -> None:
    lt, _ = _tracer()
    head = _head()
    trace = lt.start(head)
    assert len(trace.trace_id) == 32 and len(trace.span_id) == 16 and trace.parent_id == b""
    assert trace.sampled
    got = extract(head.headers)
    assert got is not None and (got.trace_id, got.span_id, got.sampled) == (
        trace.trace_id, trace.span_id, 1)


def test_the_callers_context_is_continued() -> None:
    lt, _ = _tracer(percent=0.0, propagation=("w3c", "b3"), direction="inbound")
    head = _head((b"traceparent", b"00-" + T + b"-" + S + b"-01"),
                 (b"tracestate", b"vendor=x"))
    trace = lt.start(head)
    assert (trace.trace_id, trace.parent_id, trace.sampled) == (T, S, True)
    assert trace.span_id != S
    headers = dict(head.headers)
    assert headers[b"traceparent"] == b"00-" + T + b"-" + trace.span_id + b"-01"
    assert headers[b"tracestate"] == b"vendor=x"
    assert headers[b"b3"] == T + b"-" + trace.span_id + b"-1-" + S


@pytest.mark.parametrize("percent", [0.0, 100.0])
def test_the_callers_decision_wins_over_the_rate(percent: float) -> None:
    lt, _ = _tracer(percent=percent)
    off = lt.start(_head((b"traceparent", b"00-" + T + b"-" + S + b"-00")))
    on = lt.start(_head((b"x-b3-sampled", b"1")))
    assert not off.sampled and on.sampled


def test_without_a_decision_the_rate_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """New traces (random ids) and callers' contexts without a decision (a draw) alike."""
    rng = random.Random(7)
    monkeypatch.setattr(tracer_mod, "_rand", rng.random)
    lt, _ = _tracer(percent=10.0)
    n = sum(lt.start(_head()).sampled for _ in range(10_000))
    assert 800 < n < 1200
    undecided = [(b"x-b3-traceid", b"%032x" % (i + 1)) for i in range(10_000)]
    n = sum(lt.start(_head(h)).sampled for h in undecided)
    assert 800 < n < 1200  # (the ids are small numbers: a cut-off on them would take all)
    lt, _ = _tracer(percent=0.0)
    assert not any(lt.start(_head()).sampled for _ in range(1000))
    assert not any(lt.start(_head(h)).sampled for h in undecided[:1000])
    lt, _ = _tracer(percent=100.0)
    assert all(lt.start(_head()).sampled for _ in range(1000))


def test_a_new_trace_is_sampled_by_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenTelemetry's TraceIdRatioBased rule: a new trace is sampled when its id is below
    the rate's share of the id space, so one id gets one decision, wherever it is made."""
    ids = [(1 << 128) // 4 - 1, (1 << 128) // 4, 0xF << 124, 1 << 100]  # 25%: in, out, out, in
    draw = b"".join(((t << 64) | 0xABC).to_bytes(24, "big") for t in ids) + bytes(24 * 124)
    monkeypatch.setattr(tracer_mod, "_urandom", lambda n: draw)
    monkeypatch.setattr(tracer_mod, "_rand", lambda: pytest.fail("no draw for a new trace"))
    lt, _ = _tracer(percent=25.0)
    got = [lt.start(_head()) for _ in ids]
    assert [t.sampled for t in got] == [True, False, False, True]
    assert [int(t.trace_id, 16) for t in got] == ids
    assert tracer_mod._cutoff(1.0) > b"f" * 32 and tracer_mod._cutoff(0.0) == b""
    assert tracer_mod._cutoff(0.5) == b"8" + b"0" * 31


def test_an_unsampled_request_still_propagates_not_sampled() -> None:
    lt, sink = _tracer(percent=0.0)
    head = _head()
    trace = lt.start(head)
    got = extract(head.headers)
    assert got is not None and got.sampled == 0 and got.trace_id == trace.trace_id
    lt.finish(trace, Record(head))
    assert sink.spans == []


def test_a_malformed_context_starts_a_new_trace() -> None:
    lt, _ = _tracer()
    head = _head((b"traceparent", b"ff-" + T + b"-" + S + b"-01\r\nx: y"))
    trace = lt.start(head)
    assert trace.trace_id != T and trace.parent_id == b""
    assert [v for n, v in head.headers if n == b"traceparent"] == [
        b"00-" + trace.trace_id + b"-" + trace.span_id + b"-01"]


def test_the_span_of_a_client_side_request() -> None:
    lt, sink = _tracer()
    head = _head((b"traceparent", b"00-" + T + b"-" + S + b"-01"), (b"user-agent", b"curl/8"),
                 (b"x-request-id", b"rid-1"))
    trace = lt.start(head)
    lt.finish(trace, Record(head, status=503, flags="UF"))
    [span] = sink.spans
    assert (span.trace_id, span.span_id, span.parent_id) == (T, trace.span_id, S)
    assert span.kind == CLIENT and span.name == "GET backend"
    assert 0 <= span.end_ns - span.start_ns < 10**9
    assert span.error and span.status_message == "UF"
    attrs = dict(span.attributes + span.extra)
    assert dict(span.extra).keys() == {"url.path", "client.address", "user_agent.original",
                                       "guid:x-request-id"}
    assert attrs == {
        "http.request.method": "GET", "url.path": "/api/items", "url.scheme": "http",
        "server.address": "shop.example", "server.port": 8080,
        "network.protocol.name": "http", "network.protocol.version": "1.1",
        "http.response.status_code": 503, "client.address": "10.0.0.7",
        "user_agent.original": "curl/8", "guid:x-request-id": "rid-1",
        "upstream_cluster": "backend", "upstream_address": "127.0.0.1:8080",
        "response_flags": "UF", "tulle.listener": "out"}


def test_server_spans_and_error_status() -> None:
    lt, sink = _tracer(direction="inbound")
    facts = ConnectionFacts("in", "inbound", ("127.0.0.1", 1))
    facts.peer_identity = "spiffe://cluster.local/ns/shop/sa/web"
    for status in (404, 500, 0):
        head = _head()
        lt.finish(lt.start(head), Record(head, status=status, facts=facts))
    assert [s.kind for s in sink.spans] == [SERVER] * 3
    assert [s.error for s in sink.spans] == [False, True, True]
    assert dict(sink.spans[0].attributes)["tulle.peer.identity"] == facts.peer_identity
    assert "http.response.status_code" not in dict(sink.spans[2].attributes)


def test_new_ids_are_fixed_width_lower_case_hex_and_what_was_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids of 128 requests are one read of random bytes written as hex (`hexlify`), 48
    digits a request: small values keep their leading zeros, large ones all their digits, an
    all-zero id (W3C forbids it) gets a last digit 1 (ADR 0066, ADR 0076)."""
    chunks = [(1 << 128) | 5, (1 << 192) - 1, 0, (7 << 64) | ((1 << 64) - 1)]
    draw = b"".join(c.to_bytes(24, "big") for c in chunks) + bytes(24 * 124)
    sizes: list[int] = []

    def urandom(n: int) -> bytes:
        sizes.append(n)
        return draw

    monkeypatch.setattr(tracer_mod, "_urandom", urandom)
    lt = Tracer(Tracing(sampling_percent=0), None).for_listener("out", "outbound")
    wants = [b"%048x" % chunks[0], b"%048x" % chunks[1], b"0" * 31 + b"1" + b"0" * 15 + b"1"]
    for want in wants:
        head = RequestHead(b"GET", b"/", b"a", b"http", [])
        trace = lt.start(head)
        assert trace.trace_id + trace.span_id == want
        assert head.headers == [(b"traceparent", b"00-%b-%b-00" % (want[:32], want[32:]))]
    head = RequestHead(b"GET", b"/", b"a", b"http", [(b"b3", b"1")])  # a decision, no ids
    trace = lt.start(head)
    assert (trace.trace_id, trace.span_id) == (b"%032x" % 7, b"f" * 16)
    assert sizes == [24 * 128]  # one draw so far
    for _ in range(124):
        lt.start(RequestHead(b"GET", b"/", b"a", b"http", []))
    assert sizes == [24 * 128]  # 128 requests, one draw
    lt.start(RequestHead(b"GET", b"/", b"a", b"http", []))
    assert sizes == [24 * 128, 24 * 128]  # the 129th request drew again


def test_new_ids_are_unique_across_draws() -> None:
    """Ids from the kernel's generator, 128 requests a draw: none repeats over many draws,
    and each is 32 / 16 lower-case hex digits."""
    lt = Tracer(Tracing(sampling_percent=0), None).for_listener("out", "outbound")
    traces = [lt.start(RequestHead(b"GET", b"/", b"a", b"http", [])) for _ in range(5000)]
    trace_ids = {t.trace_id for t in traces}
    span_ids = {t.span_id for t in traces}
    assert len(trace_ids) == len(span_ids) == 5000
    for t in traces[:200]:
        assert len(t.trace_id) == 32 and len(t.span_id) == 16
        assert all(c in b"0123456789abcdef" for c in t.trace_id + t.span_id)
