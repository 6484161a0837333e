"""The tracer in force across snapshots: kept when unchanged, its exporter started at commit,
retired (to be flushed) when tracing changes, and its counts shown as one series."""

from __future__ import annotations

from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.tracing.runtime import TracingRuntime
from tulle.dataplane.telemetry.tracing.span import CLIENT, Span
from tulle.proxyconfig.validate import validate


def _cfg(**tracing: object) -> object:
    return validate({"node": {"name": "web-0", "namespace": "shop", "service": "web"},
                     "telemetry": {"tracing": tracing} if tracing else {}})


def _span() -> Span:
    return Span(b"1" * 32, b"2" * 16, b"", "GET", CLIENT, 1, 2, (), False)


def _metric(metrics: ProxyMetrics, result: str) -> str:
    for line in metrics.registry.render().splitlines():
        if line.startswith(f'tulle_proxy_trace_spans_total{{result="{result}"}}'):
            return line.rsplit(" ", 1)[1]
    return ""


async def test_unchanged_tracing_keeps_its_tracer_and_a_change_retires_the_exporter() -> None:
    metrics = ProxyMetrics()
    rt = TracingRuntime(metrics)
    assert rt.prepare(_cfg()) is None  # type: ignore[arg-type]
    on = _cfg(otlp_endpoint="http://127.0.0.1:9", sampling_percent=5)
    t1 = rt.prepare(on)  # type: ignore[arg-type]
    assert t1 is not None and t1.sink is not None and t1.threshold == 0.05
    assert _metric(metrics, "exported") == ""  # no series before an exporter runs
    assert rt.commit(t1) == []
    assert rt.prepare(_cfg(otlp_endpoint="http://127.0.0.1:9", sampling_percent=5)) is t1
    # A prepared tracer that never goes in force starts nothing and leaves nothing behind.
    assert rt.prepare(_cfg(otlp_endpoint="http://127.0.0.1:9")) is not t1
    assert _metric(metrics, "exported") == "0"
    t1.sink.add(_span())  # type: ignore[union-attr]
    t2 = rt.prepare(_cfg(otlp_endpoint="http://127.0.0.1:9", sampling_percent=50))
    retired = rt.commit(t2)
    assert [r.exporter for r in retired] == [t1.sink.exporter]  # type: ignore[union-attr]
    for r in retired:
        await r.close()
    # The retired exporter could not deliver (nothing listens on port 9): counted, kept.
    assert _metric(metrics, "failed") == "1"
    for r in rt.close():
        await r.close()
    assert rt.tracer is None and _metric(metrics, "failed") == "1"


async def test_a_full_export_queue_drops_and_counts() -> None:
    metrics = ProxyMetrics()
    rt = TracingRuntime(metrics)
    t = rt.prepare(_cfg(otlp_endpoint="http://127.0.0.1:9"))
    assert t is not None and t.sink is not None
    rt.commit(t)
    exporter = t.sink.exporter  # type: ignore[attr-defined]
    for _ in range(exporter.max_queue + 10):
        t.sink.add(_span())
    assert _metric(metrics, "dropped") == "10"
    for r in rt.close():
        await r.close()


def test_the_service_name_defaults_to_the_nodes_service() -> None:
    from tulle.dataplane.telemetry.tracing.runtime import service_name

    cfg = _cfg(service_name="")
    assert cfg.telemetry.tracing is not None  # type: ignore[attr-defined]
    assert service_name(cfg, cfg.telemetry.tracing) == "web"  # type: ignore[arg-type, attr-defined]
    named = _cfg(service_name="checkout")
    assert service_name(named, named.telemetry.tracing) == "checkout"  # type: ignore[arg-type, attr-defined]
