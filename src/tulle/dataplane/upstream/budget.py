"""The retry budget of one cluster: retries allowed on top of its requests (ADR 0039).

Why a budget and not only an attempt count: with 3 attempts per request, an outage of the
upstream triples its load exactly when it can least take it.  Linkerd's answer, taken here:
over a sliding window (`ttl`, 10 s), retries may be at most `ratio` of the requests (20%) plus
a floor (`min_per_second` x ttl, 10/s) so that a quiet service can still retry.  When every
endpoint fails, retry traffic stays at ~20% of the requests instead of 200%.

Shape: the window is 10 slots of ttl/10; each slot counts requests deposited and retries
withdrawn.  Advancing drops the slots that fell out of the window (bounded: at most 10 per
call).  Per request the cost is one increment (`pending`, counted into a slot in batches).  The
clock is injected (`clock`) so tests run on virtual time.  One object per cluster name, kept
across snapshot swaps with its counts (`Limits.budget`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from tulle.proxyconfig.retry import RetryBudget

SLOTS: Final = 10
FLUSH_EVERY: Final = 64
DEFAULTS: Final = RetryBudget()


class Budget:
    """Deposits (requests) and withdrawals (retries) over a sliding window of `SLOTS` slots."""

    __slots__ = ("_deposits", "_retries", "_slot", "clock", "deposited", "pending", "ratio",
                 "reserve", "slot_len", "withdrawn")

    def __init__(self, cfg: RetryBudget | None, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._deposits = [0] * SLOTS
        self._retries = [0] * SLOTS
        self.deposited = 0
        """Requests in the window (flushed)."""
        self.pending = 0
        """Requests not yet counted into a slot: the request path only increments this (no
        clock read per request); they are counted into the slot current at the next retry or
        every `FLUSH_EVERY` requests.  A pending request can so be dated late, never early:
        it leaves the window at most one slot late, which can let the budget allow up to
        ratio x `FLUSH_EVERY` (13) retries more than an exact count would, never fewer."""
        self.withdrawn = 0
        """Retries in the window."""
        self._slot = 0
        """The absolute index (time // slot_len) of the current slot."""
        self.ratio = 0.0
        self.reserve = 0.0
        self.slot_len = 1.0
        self.configure(cfg)

    def configure(self, cfg: RetryBudget | None) -> None:
        """Take new parameters (at a swap's commit); the counts carry on.  A changed window
        starts afresh (its slots would mean other times)."""
        c = cfg if cfg is not None else DEFAULTS
        ttl = c.ttl_ms / 1000
        self.ratio = c.percent / 100
        self.reserve = c.min_retries_per_second * ttl
        slot_len = ttl / SLOTS
        if slot_len != self.slot_len:
            self.slot_len = slot_len
            self._deposits = [0] * SLOTS
            self._retries = [0] * SLOTS
            self.deposited = self.withdrawn = 0
            self._slot = int(self.clock() / slot_len)

    def _advance(self) -> int:
        """Move the window to now; the index in the ring of the current slot."""
        slot = int(self.clock() / self.slot_len)
        cur = self._slot
        if slot != cur:
            if slot < cur:  # a clock that went back: count into the current slot
                return cur % SLOTS
            deposits, retries = self._deposits, self._retries
            for s in range(cur + 1, min(slot, cur + SLOTS) + 1):
                i = s % SLOTS
                self.deposited -= deposits[i]
                self.withdrawn -= retries[i]
                deposits[i] = retries[i] = 0
            self._slot = slot
        return slot % SLOTS

    def deposit(self) -> None:
        """A request (not a retry) was sent to the cluster.  The hot path inlines this
        (`pending += 1`, `flush` at `FLUSH_EVERY`): see `pending`."""
        self.pending += 1
        if self.pending >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Count the pending deposits into the current slot."""
        n, self.pending = self.pending, 0
        self._deposits[self._advance()] += n
        self.deposited += n

    def withdraw(self) -> bool:
        """May one more retry go now?  True counts it; False: the budget is spent."""
        if self.pending:
            self.flush()
        i = self._advance()
        if self.withdrawn + 1 > self.ratio * self.deposited + self.reserve:
            return False
        self._retries[i] += 1
        self.withdrawn += 1
        return True
