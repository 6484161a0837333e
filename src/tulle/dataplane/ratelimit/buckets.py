"""Token buckets, alone and keyed (LRU-bounded), on a clock passed in.

A bucket holds at most `capacity` tokens and gains `capacity` per `interval` seconds, evenly;
a request takes one.  No timer runs: the refill is computed from the time elapsed when the
bucket is next asked (Envoy's and Linkerd's local limits work the same way).  Time is always
an argument (the loop's monotonic clock in the proxy, virtual time in tests), never read here.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class TokenBucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: int, interval: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / interval
        """Tokens per second."""
        self.tokens = float(capacity)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def remaining(self, now: float) -> int:
        self._refill(now)
        return int(self.tokens)

    def wait(self, now: float) -> float:
        """Seconds until the next token (0 when there is one)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def reset_after(self, now: float) -> int:
        """Whole seconds until the bucket is full again (the `t` of the RateLimit header)."""
        self._refill(now)
        return math.ceil((self.capacity - self.tokens) / self.rate)


class KeyedBuckets:
    """One bucket per key, at most `max_keys` of them: the least recently used is dropped
    (a key seen again starts full).  Bounded memory whatever keys callers send."""

    __slots__ = ("capacity", "interval", "max_keys", "table")

    def __init__(self, capacity: int, interval: float, max_keys: int) -> None:
        self.capacity = capacity
        self.interval = interval
        self.max_keys = max_keys
        self.table: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def get(self, key: bytes, now: float) -> TokenBucket:
        table = self.table
        b = table.get(key)
        if b is None:
            if len(table) >= self.max_keys:
                table.popitem(last=False)
            b = table[key] = TokenBucket(self.capacity, self.interval, now)
        else:
            table.move_to_end(key)
        return b

    def __len__(self) -> int:
        return len(self.table)
