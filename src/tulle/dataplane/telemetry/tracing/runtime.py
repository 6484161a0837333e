"""The tracer in force, kept across snapshots that do not change `telemetry.tracing`.

Why its own keeper: a tracer owns an exporter (a queue and a task that POSTs batches), which
must outlive swaps that do not touch tracing (so a snapshot change neither drops queued spans
nor rebuilds every listener context) and must be flushed and stopped when tracing changes or
the proxy closes.  `prepare` builds without starting anything (an apply that fails leaves
nothing running); `commit` starts the new exporter and retires the old one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.tracing.span import Span, SpanSink
from tulle.dataplane.telemetry.tracing.tracer import Tracer
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.tracing import Tracing

if TYPE_CHECKING:  # imported when a section names an OTLP endpoint (ADR 0068)
    from tulle.dataplane.telemetry.otlp.exporter import OtlpExporter

log = logging.getLogger("tulle.proxy")


class SpanExporter(SpanSink, Protocol):
    """A sink with a life: started once in force, closed (flushing what it holds) after."""

    exporter: OtlpExporter[Span]
    """The poster, whose `stats` the proxy's metrics show."""
    closed: bool

    def start(self) -> None: ...

    async def close(self) -> None: ...


class ExporterFactory(Protocol):
    def __call__(self, section: Tracing, service: str, node: str,
                 namespace: str) -> SpanExporter: ...


def otlp_exporter(section: Tracing, service: str, node: str, namespace: str) -> SpanExporter:
    """The exporter of a section with an `otlp_endpoint` (validated by the contract)."""
    from tulle.dataplane.telemetry.otlp.traces import TraceExporter

    return TraceExporter(section.otlp_endpoint, {
        "service.name": service, "service.namespace": namespace,
        "service.instance.id": f"{node}.{namespace}"})


def service_name(cfg: ProxyConfig, section: Tracing) -> str:
    """`service.name` of the spans: configured, else the node's service, else its name."""
    return section.service_name or cfg.node.service or cfg.node.name


SPAN_RESULTS = ("exported", "dropped", "failed", "rejected")
"""`tulle_proxy_trace_spans_total{result}`: accepted by the collector; refused because the
queue was full; given up after the retries (or a permanent error, or left at shutdown); of
the exported, what the collector said it rejected (OTLP partial success)."""


class SpanCounts:
    """The exporters' counts as one cumulative series per result, across tracing changes (an
    exporter retired by a new snapshot is folded in once it has closed)."""

    __slots__ = ("_base", "_live")

    def __init__(self) -> None:
        self._base = dict.fromkeys(SPAN_RESULTS, 0)
        self._live: list[SpanExporter] = []

    def watch(self, exporter: SpanExporter) -> None:
        self._live.append(exporter)

    def value(self, result: str) -> int:
        for e in [e for e in self._live if e.closed]:
            self._live.remove(e)
            for r in SPAN_RESULTS:
                self._base[r] += int(getattr(e.exporter.stats, r))
        return self._base[result] + sum(int(getattr(e.exporter.stats, result))
                                        for e in self._live)


class _CountChild:
    """A counter child whose value is read from `SpanCounts` when /metrics renders."""

    __slots__ = ("_counts", "_result")

    def __init__(self, counts: SpanCounts, result: str) -> None:
        self._counts = counts
        self._result = result

    @property
    def value(self) -> int:
        return self._counts.value(self._result)


class TracingRuntime:
    """Builds the `Tracer` of a snapshot, reusing the one in force when nothing changed."""

    __slots__ = ("_exporters", "_factory", "_family", "_key", "counts", "tracer")

    def __init__(self, metrics: ProxyMetrics | None = None,
                 factory: ExporterFactory | None = otlp_exporter) -> None:
        self._factory = factory
        self.counts = SpanCounts()
        self._family = metrics.registry.counter(
            "tulle_proxy_trace_spans_total",
            "Sampled spans by what became of them: exported, dropped (export queue full), "
            "failed (given up), rejected (by the collector)", ("result",),
        ) if metrics is not None else None
        """Shown from the first exporter on (a proxy that never exported shows no series)."""
        self._key: tuple[object, ...] | None = None
        self.tracer: Tracer | None = None
        """The tracer in force (None: tracing off)."""
        self._exporters: dict[int, SpanExporter] = {}
        """Exporters by the id of the tracer that owns them (started at commit)."""

    def prepare(self, cfg: ProxyConfig) -> Tracer | None:
        section = cfg.telemetry.tracing
        if section is None:
            return None
        service = service_name(cfg, section)
        key = (section, service, cfg.node.name, cfg.node.namespace)
        if self.tracer is not None and self._key == key:
            return self.tracer
        exporter = None
        if section.otlp_endpoint and self._factory is not None:
            exporter = self._factory(section, service, cfg.node.name, cfg.node.namespace)
        tracer = Tracer(section, exporter)
        tracer.key = key
        if exporter is not None:
            self._exporters[id(tracer)] = exporter
        return tracer

    def commit(self, tracer: Tracer | None) -> list[SpanExporter]:
        """Put `tracer` in force; answers the exporters to close (the caller awaits them)."""
        if tracer is self.tracer:
            return []
        retired: list[SpanExporter] = []
        if self.tracer is not None:
            old = self._exporters.pop(id(self.tracer), None)
            if old is not None:
                retired.append(old)
        self.tracer = tracer
        self._key = tracer.key if tracer is not None else None
        if tracer is not None:
            exporter = self._exporters.get(id(tracer))
            if exporter is not None:
                exporter.start()
                self.counts.watch(exporter)
                family = self._family
                if family is not None and not family.children:
                    for r in SPAN_RESULTS:
                        family.children[(r,)] = _CountChild(self.counts, r)
        # Exporters of tracers prepared but never committed (a failed apply) were not started.
        keep = id(tracer) if tracer is not None else None
        for k in [k for k in self._exporters if k != keep]:
            del self._exporters[k]
        return retired

    def close(self) -> list[SpanExporter]:
        """The proxy closes: the exporter in force, to close (flush) by the caller."""
        return self.commit(None)
