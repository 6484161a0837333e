"""`Mesh.spec.observability`: what every proxy of the mesh observes, one sub-model per signal.

Each signal compiles into its own struct of the proxy contract's `telemetry` section
(`proxyconfig/telemetry.py`); every field here is enforced by the proxies, none only stored.
Access and flow logs: `api/logs.py` (ADR 0054).
"""

from __future__ import annotations

from tulle.api.logs import AccessLogSettings, FlowLogSettings
from tulle.api.meta import Model


class Observability(Model):
    accessLog: AccessLogSettings | None = None
    """One record per HTTP request (unset: none)."""
    flowLog: FlowLogSettings | None = None
    """One record per relayed TCP connection (unset: none)."""


__all__ = ["Observability"]
