"""The access and flow loggers in force, across snapshots.

Why a holder: a logger owns a sink (a writer thread, or an OTLP exporter with its queue and
connection), which must outlive snapshots that do not change its settings and be closed
(flushed) when one does.  `prepare` builds loggers only for a changed `telemetry.access_log`
/ `telemetry.flow_log` (or node, which names the records' resource); `commit` puts them in
every listener context and hands back the retired ones, which the server closes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tulle.dataplane.telemetry.access_log import AccessLogger
from tulle.dataplane.telemetry.flow_records import FlowLogger
from tulle.dataplane.telemetry.metrics import Counter, ProxyMetrics
from tulle.dataplane.telemetry.sinks import SinkStats

if TYPE_CHECKING:
    from tulle.dataplane.listeners.listener_context import ListenerContext
    from tulle.dataplane.telemetry.otlp.common import Value
    from tulle.proxyconfig.model import Node, ProxyConfig

Logger = AccessLogger | FlowLogger


def _name(logger: Logger) -> str:
    return "access_log" if isinstance(logger, AccessLogger) else "flow_log"


def resource_of(node: Node) -> dict[str, Value]:
    """The OTLP resource of the proxy's records (OpenTelemetry semantic conventions)."""
    out: dict[str, Value] = {"service.name": node.service or node.name,
                             "service.namespace": node.namespace,
                             "service.instance.id": node.name,
                             "telemetry.sdk.name": "tulle"}
    if node.zone:
        out["cloud.availability_zone"] = node.zone
    return out


OUTCOMES = ("offered", "dropped", "written", "failed")


class LogRecordCounts(Counter):
    """`tulle_proxy_log_records_total{log,outcome}`, read from the sinks when /metrics is
    rendered (the sinks count in plain attributes; a retired sink's counts stay in)."""

    def __init__(self, runtime: LogsRuntime) -> None:
        super().__init__("tulle_proxy_log_records_total",
                         "Access and flow log records by outcome: offered to the sink, dropped "
                         "(queue full), written (or exported), failed (write or export failed).",
                         ("log", "outcome"))
        self.runtime = runtime

    def render(self) -> Iterable[str]:
        totals: dict[tuple[str, str], int] = {}
        for name, stats in self.runtime.stats():
            for outcome in OUTCOMES:
                key = (name, outcome)
                totals[key] = totals.get(key, 0) + getattr(stats, outcome)
        for key, n in totals.items():
            self.labels(*key).value = n
        return super().render()


class LogsRuntime:
    """The loggers in force (None: that log is off)."""

    def __init__(self, metrics: ProxyMetrics | None = None) -> None:
        self.access: AccessLogger | None = None
        self.flow: FlowLogger | None = None
        self._node: Node | None = None
        self._past: list[Logger] = []
        """Retired loggers (their sinks' counts stay in the totals)."""
        self.family: LogRecordCounts | None = None
        if metrics is not None:  # (the registry has no public add for a custom family)
            self.family = LogRecordCounts(self)
            metrics.registry._add(self.family)

    def stats(self) -> list[tuple[str, SinkStats]]:
        return [(_name(x), x.sink.stats) for x in (*self._past, *self.all())]

    def prepare(self, cfg: ProxyConfig) -> tuple[AccessLogger | None, FlowLogger | None]:
        """The loggers `cfg` asks for: those in force when their settings are unchanged."""
        t = cfg.telemetry
        me = t.principal or None
        same_node = self._node == cfg.node
        access = self.access
        if t.access_log is None:
            access = None
        elif (access is None or not same_node or access.cfg != t.access_log
              or access.principal != me):
            access = AccessLogger(t.access_log, resource_of(cfg.node), t.principal)
        flow = self.flow
        if t.flow_log is None:
            flow = None
        elif flow is None or not same_node or flow.cfg != t.flow_log or flow.principal != me:
            flow = FlowLogger(t.flow_log, resource_of(cfg.node), cfg.node, t.principal)
        return access, flow

    def commit(self, node: Node, loggers: tuple[AccessLogger | None, FlowLogger | None],
               contexts: Iterable[ListenerContext]) -> list[Logger]:
        """Put `loggers` in force; the ones they replace are returned (close them)."""
        access, flow = loggers
        retired: list[Logger] = [old for old, new in ((self.access, access), (self.flow, flow))
                                 if old is not None and old is not new]
        for new in (access, flow):
            if new is not None and new not in (self.access, self.flow):
                new.start() if isinstance(new, FlowLogger) else new.sink.start()
        self.access, self.flow, self._node = access, flow, node
        self._past += retired
        family = self.family
        if family is not None:  # the series exist from the start (zeros)
            for new in (access, flow):
                if new is not None:
                    for outcome in OUTCOMES:
                        family.labels(_name(new), outcome)
        for ctx in contexts:
            ctx.access_log = access
            ctx.flow_log = flow
        return retired

    def all(self) -> list[Logger]:
        return [x for x in (self.access, self.flow) if x is not None]


async def close_loggers(loggers: Iterable[Logger]) -> None:
    """Flush and stop retired loggers (their sinks)."""
    for logger in loggers:
        if isinstance(logger, FlowLogger):
            await logger.close()
        else:
            await logger.sink.close()
