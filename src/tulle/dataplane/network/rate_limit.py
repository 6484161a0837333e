"""`rate_limit`: new opaque TCP connections per interval (a token bucket per listener chain).

Config: `tulle.proxyconfig.network.rate_limit`.  The bucket (`ratelimit/buckets.py`) is the
factory's; when a new snapshot rebuilds the listener's chain the new factory adopts its
predecessor's bucket (`carry`, as `connection_limit` does with its slots), so a swap never
hands out a fresh burst.  A connection that finds no token is rejected with reason
`rate_limited` (counted in `tulle_proxy_network_filter_rejections_total`).
"""

from __future__ import annotations

import asyncio

from tulle.dataplane.network.filter import (
    CONTINUE,
    DEFAULT_STOP_TIMEOUT,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Reject,
    Verdict,
)
from tulle.dataplane.ratelimit.buckets import TokenBucket
from tulle.proxyconfig.network.rate_limit import ConnectionRateLimit

RATE_LIMITED = Reject("rate_limited")


class _Take:
    """Stateless: one instance serves every connection of the factory."""

    __slots__ = ("factory",)

    def __init__(self, factory: ConnectionRateLimitFactory) -> None:
        self.factory = factory

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        now = asyncio.get_running_loop().time()
        return CONTINUE if self.factory.bucket.take(now) else RATE_LIMITED

    def on_close(self, record: ConnectionRecord) -> None:
        return None


class ConnectionRateLimitFactory:
    __slots__ = ("bucket", "filter")
    name = "rate_limit"
    stop_timeout = DEFAULT_STOP_TIMEOUT
    observer = False

    def __init__(self, cfg: ConnectionRateLimit) -> None:
        self.bucket = TokenBucket(cfg.connections, cfg.interval_ms / 1000.0, 0.0)
        self.filter = _Take(self)

    def create(self) -> _Take:
        return self.filter

    def carry(self, previous: object) -> None:
        """Take over the bucket of the same filter in the listener's previous snapshot when
        its settings are the same (changed settings start a new bucket)."""
        if isinstance(previous, ConnectionRateLimitFactory):
            old = previous.bucket
            if (old.capacity, old.rate) == (self.bucket.capacity, self.bucket.rate):
                self.bucket = old


def build(cfg: ConnectionRateLimit) -> ConnectionRateLimitFactory:
    return ConnectionRateLimitFactory(cfg)
