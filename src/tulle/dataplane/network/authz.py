"""`authz`: the authorization policies on opaque TCP connections (L4), before anything is dialled.

Config: `tulle.proxyconfig.network.authz`.  The decision is the HTTP filter's (`Engine` in
`dataplane/filters/authz.py`, so both layers agree) without a request: operations with HTTP
fields never match in ALLOW and AUDIT policies and match on their other fields in DENY policies.
A refused connection is reset (`Reject("denied")`, counted in
`tulle_proxy_network_filter_rejections_total`); every decision is counted in
`tulle_proxy_authz_decisions_total` with its policy once the chain binds the metrics.

A relay already open when a swap brings new policies is decided again (`recheck`, ADR 0117):
cut when they deny it, counted as a denial at open is.  An admitted relay is not counted
again (it was when it opened), but a dry-run policy that would cut it is: `dry_run_deny`,
and the `tulle.authz` log line.  AUDIT policies count connections as they open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tulle.dataplane.filters.authz import Engine, Peer
from tulle.dataplane.network.filter import (
    CONTINUE,
    DEFAULT_STOP_TIMEOUT,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Reject,
    Verdict,
)
from tulle.proxyconfig.network.authz import NetworkAuthz

if TYPE_CHECKING:
    from tulle.dataplane.telemetry.metrics import ProxyMetrics

DENIED = Reject("denied")


class NetworkAuthzFilter:
    """Stateless: one instance serves every connection of the listener."""

    __slots__ = ("cfg", "engine", "listener", "metrics")
    name = "authz"
    stop_timeout = DEFAULT_STOP_TIMEOUT
    observer = False

    def __init__(self, cfg: NetworkAuthz) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg.policies)
        self.listener = ""
        self.metrics: ProxyMetrics | None = None

    def bind_metrics(self, listener: str, metrics: ProxyMetrics) -> None:
        """Called by the chain once it is built: where decisions are counted."""
        self.listener = listener
        self.metrics = metrics

    def create(self) -> NetworkAuthzFilter:
        return self

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        v = self.engine.decide(Peer(facts.peer_identity or "", facts.peer[0]), None)
        m = self.metrics
        if m is not None:
            for policy, action, result in v.events:
                m.authz_decisions.labels(self.listener, policy, action, result).value += 1
        return CONTINUE if v.allowed else DENIED

    def recheck(self, facts: ConnectionFacts) -> Reject | None:
        v = self.engine.decide(Peer(facts.peer_identity or "", facts.peer[0]), None)
        m = self.metrics
        if m is not None:
            for policy, action, result in v.events:
                if not v.allowed or result == "dry_run_deny":
                    m.authz_decisions.labels(self.listener, policy, action, result).value += 1
        return None if v.allowed else DENIED

    def on_close(self, record: ConnectionRecord) -> None:
        pass


def build(cfg: NetworkAuthz) -> NetworkAuthzFilter:
    return NetworkAuthzFilter(cfg)
