"""`Mesh.spec.observability.tap`: what live tap may do in this mesh (ADR 0056).

Enforced by the control plane when a tap starts and at every renewal: the proxies never see
these settings (a tap is a stream message, not config), so no contract field and no feature.
"""

from __future__ import annotations

from pydantic import Field

from tulle.api.meta import Model


class TapSettings(Model):
    enabled: bool = True
    """False: the control plane refuses every tap (403) and ends the running ones within a
    renewal (10 s)."""
    maxRate: float = Field(default=100.0, ge=0.1, le=100.0)
    """Records per second per proxy a tap may ask for at most (a higher ask is lowered)."""
    headers: bool = True
    """False: request headers are never shown, not even to admin tokens (403 when asked).
    Credential headers are redacted either way."""


__all__ = ["TapSettings"]
