"""The contract's `telemetry` section: what a proxy observes of its traffic and how.

One sub-struct per signal (metrics, access logs, flow logs, tracing, tap), each its own
feature, compiled from `Mesh.spec.observability`.  This branch adds `access_log` and
`flow_log` (`proxyconfig/logs.py`, ADR 0054); absent: off, and nothing is paid for them.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from tulle.proxyconfig.logs import AccessLogTelemetry, FlowLogTelemetry
from tulle.proxyconfig.values import Base


class Telemetry(Base, frozen=True, kw_only=True):
    """What the proxy observes; each signal absent is off."""

    access_log: AccessLogTelemetry | None = None
    """One record per HTTP request (feature `access-log`); null: none."""
    flow_log: FlowLogTelemetry | None = None
    """One record per relayed TCP connection (feature `flow-logs`); null: none."""
    principal: Annotated[str, Meta(max_length=2048)] = ""
    """The proxy's own workload identity (SPIFFE ID) for the records that name both sides
    (the source of its outbound requests, the destination of its inbound ones); empty:
    unnamed."""


__all__ = ["Telemetry"]
