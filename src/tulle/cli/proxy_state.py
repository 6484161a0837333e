"""How the CLI reads a Workload's `status.proxy`: whether its proxy is draining.

Its own module because `tulle get` and `tulle describe` both read it, and `describe` taking it
from `get` closed a circle of imports (get -> resources -> describe_service -> get).
"""

from __future__ import annotations

from typing import Any

DRAINING_REASON = "draining: the proxy is shutting down"
"""The control plane's reason while a proxy drains on its stream (`push.session.DRAINING`, a
test holds them equal; not imported: `tulle get` stays light)."""


def draining(proxy: dict[str, Any]) -> bool:
    """A Workload's `status.proxy` says its proxy is draining on its stream (ADR 0092)."""
    return proxy.get("state") == "Disconnected" and proxy.get("reason") == DRAINING_REASON
