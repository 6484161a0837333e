"""The `telemetry` section of the contract: one sub-struct per telemetry owner.

Why one section: metrics, access logs, flow logs, traces and tap are all "what the proxy
reports about the traffic it carries", configured from `Mesh.spec.observability`.  Each part
is its own feature (`proxyconfig/features.py`), so a proxy that lacks one is sent the others.
"""

from __future__ import annotations

from tulle.proxyconfig.tracing import Tracing
from tulle.proxyconfig.values import Base as _Base


class Telemetry(_Base, frozen=True, kw_only=True):
    """What the proxy reports about its traffic, one part per owner."""

    tracing: Tracing | None = None
    """Trace propagation and spans (feature `tracing`); null: no tracing at all."""
