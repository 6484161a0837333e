"""`connection_limit`: at most N relays at once through a listener's chain.

Config: `tulle.proxyconfig.network.connection_limit`.  A slot is taken in `on_connect` and
given back in `on_close` (the chain calls it for every filter whose `on_connect` ran).  The
count is a `Slots` object shared by the factory and every connection it admitted; when a new
snapshot rebuilds the listener's chain, the new factory adopts its predecessor's `Slots`
(`carry`), so connections still open from the old snapshot keep counting and a swap never
opens a window of twice the limit.
"""

from __future__ import annotations

from tulle.dataplane.network.filter import (
    CONTINUE,
    DEFAULT_STOP_TIMEOUT,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Reject,
    Verdict,
)
from tulle.proxyconfig.network.connection_limit import ConnectionLimit

OVER_LIMIT = Reject("over_limit")


class Slots:
    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


class _Held:
    """One connection's claim on a slot."""

    __slots__ = ("factory", "held")

    def __init__(self, factory: ConnectionLimitFactory) -> None:
        self.factory = factory
        self.held = False

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        f = self.factory
        slots = f.slots
        if slots.active >= f.max_connections:
            return OVER_LIMIT
        slots.active += 1
        self.held = True
        return CONTINUE

    def on_close(self, record: ConnectionRecord) -> None:
        if self.held:
            self.held = False
            self.factory.slots.active -= 1


class ConnectionLimitFactory:
    __slots__ = ("max_connections", "slots")
    name = "connection_limit"
    stop_timeout = DEFAULT_STOP_TIMEOUT
    observer = False

    def __init__(self, cfg: ConnectionLimit) -> None:
        self.max_connections = cfg.max_connections
        self.slots = Slots()

    def create(self) -> _Held:
        return _Held(self)

    def carry(self, previous: object) -> None:
        """Take over the count of the same filter in the listener's previous snapshot."""
        if isinstance(previous, ConnectionLimitFactory):
            self.slots = previous.slots


def build(cfg: ConnectionLimit) -> ConnectionLimitFactory:
    return ConnectionLimitFactory(cfg)
