"""How the CLI reads a Workload's `status.proxy`: whether its proxy is draining or starting.

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


STARTING_PREFIX = "starting: "
"""How the control plane's reason begins while a proxy on its stream does not serve yet
(`readiness.STARTING`, `readiness.first_config_rejected`; ADR 0116)."""


def starting(proxy: dict[str, Any]) -> bool:
    """A Workload's `status.proxy` says its proxy is on its stream but not serving yet: it has
    not applied its first config (or rejected it), so it is not an endpoint (ADR 0116)."""
    return (proxy.get("state") == "Disconnected"
            and str(proxy.get("reason") or "").startswith(STARTING_PREFIX))
