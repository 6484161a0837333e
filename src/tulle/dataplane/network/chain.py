"""Running a listener's network filters for one connection (the contract is `filter.py`).

`build_chain` turns a listener's `network_filters` into a `NetworkChain` once per snapshot:
factories sorted by `order.ORDER`, deciders apart from observers.  A listener without network
filters gets None and its relays never look further.  Each relayed connection gets a
`ConnectionChain`: `admit()` runs the deciders (synchronously when none stops; a stop is
awaited, bounded by the stopping factory's `stop_timeout`) and gives None (go on to the TCP
proxy) or the `Reject`; `closed(record)` runs the close hooks.  `NetworkChain.recheck(facts)`
decides a relay already open again by the chain's policy filters (a swap, ADR 0117).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

from tulle.dataplane.network.filter import (
    CONTINUE,
    STOP,
    ConnectionFacts,
    ConnectionRecord,
    NetworkFilter,
    NetworkFilterFactory,
    PolicyFactory,
    Reject,
)
from tulle.dataplane.network.order import POSITION, builder

if TYPE_CHECKING:
    from tulle.dataplane.telemetry.metrics import ProxyMetrics
    from tulle.proxyconfig.network import NetworkFilterConfig

log = logging.getLogger(__name__)

TIMEOUT: Final = Reject("timeout")
FILTER_ERROR: Final = Reject("filter_error")


class NetworkChain:
    """One listener's network filter factories for one snapshot, in the declared order."""

    __slots__ = ("deciders", "listener", "metrics", "observers", "policies", "policy_key")

    def __init__(self, factories: Sequence[NetworkFilterFactory], listener: str,
                 metrics: ProxyMetrics) -> None:
        ordered = sorted(factories, key=lambda f: POSITION[f.name])  # stable: config order kept
        self.deciders = tuple(f for f in ordered if not f.observer)
        self.observers = tuple(f for f in ordered if f.observer)
        self.listener = listener
        self.metrics = metrics
        self.policies: tuple[PolicyFactory, ...] = tuple(
            cast("PolicyFactory", f) for f in self.deciders if hasattr(f, "recheck"))
        """The deciders a relay already open is decided again by (`recheck`), in order."""
        self.policy_key: tuple[object, ...] = tuple(f.cfg for f in self.policies)
        """Their configs: equal keys decide every connection alike."""
        for f in ordered:
            bind = getattr(f, "bind_metrics", None)
            if bind is not None:  # filters that count more than rejections (authz)
                bind(listener, metrics)

    def adopt(self, previous: NetworkChain | None) -> None:
        """Take over state from the listener's chain of the previous snapshot: the k-th
        factory of a type carries the k-th of the same type (a `carry` method, for filters
        whose state must outlive a swap, such as a connection count)."""
        if previous is None:
            return
        old: dict[str, list[NetworkFilterFactory]] = {}
        for f in previous.deciders + previous.observers:
            old.setdefault(f.name, []).append(f)
        seen: dict[str, int] = {}
        for f in self.deciders + self.observers:
            k = seen[f.name] = seen.get(f.name, -1) + 1
            same = old.get(f.name, [])
            carry = getattr(f, "carry", None)
            if carry is not None and k < len(same):
                carry(same[k])

    def connection(self, facts: ConnectionFacts) -> ConnectionChain:
        return ConnectionChain(self, facts)

    def recheck(self, facts: ConnectionFacts) -> tuple[str, Reject] | None:
        """Decide a relay already open again by the policy filters, in the declared order:
        None when they admit it, else the filter that refuses and its `Reject` (counted in
        the rejections as at open).  A filter that raises refuses (`filter_error`), as at
        open: an authorization that cannot decide never lets a stream through."""
        for f in self.policies:
            try:
                v = f.recheck(facts)
            except Exception:
                log.exception("network filter %s raised in recheck (listener %s)", f.name,
                              self.listener)
                self.count_error(f.name, "recheck")
                v = FILTER_ERROR
            if v is not None:
                self.count_rejection(f.name, v.reason)
                return f.name, v
        return None

    def count_rejection(self, name: str, reason: str) -> None:
        self.metrics.network_filter_rejections.labels(self.listener, name, reason).value += 1

    def count_error(self, name: str, hook: str) -> None:
        self.metrics.network_filter_errors.labels(self.listener, name, hook).value += 1


def build_chain(configs: Sequence[NetworkFilterConfig], listener: str,
                metrics: ProxyMetrics) -> NetworkChain | None:
    """The chain of a listener's `network_filters`; None when it has none (nothing to pay)."""
    if not configs:
        return None
    factories = [builder(type(c).__struct_config__.tag)(c) for c in configs]  # type: ignore[arg-type]
    return NetworkChain(factories, listener, metrics)


def policy_key(chain: NetworkChain | None) -> tuple[object, ...]:
    """What `chain` decides open relays by (empty: nothing, or no chain)."""
    return chain.policy_key if chain is not None else ()


_RUNNING: Final = 0
"""Inside a filter's `on_connect`."""
_STOPPED: Final = 1
"""A filter answered STOP; waiting for its resume/reject or the bound."""
_DONE: Final = 2


class ConnectionChain:
    """One connection's pass through its listener's chain."""

    __slots__ = ("_early", "_filters", "_index", "_settled", "_state", "_timer", "_waiter", "chain",
                 "facts", "rejected_by", "verdict")

    def __init__(self, chain: NetworkChain, facts: ConnectionFacts) -> None:
        self.chain = chain
        self.facts = facts
        self._filters: list[NetworkFilter] = []
        self._index = 0
        """The decider running (or stopped); those before it continued."""
        self._state = _RUNNING
        self._settled = False
        self._early: Reject | None = None
        """A resume (None) or reject that came from inside `on_connect` (then `_settled`)."""
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.verdict: Reject | None = None
        self.rejected_by = ""

    async def admit(self) -> Reject | None:
        """Run the deciders: None to relay the connection, else why it is refused."""
        self._advance()
        if self._state == _STOPPED:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._cancel_timer()
                self._waiter = None
                if self._state != _DONE:  # cancelled (the relay was aborted while waiting)
                    self._state = _DONE
        return self.verdict

    def _advance(self) -> None:
        deciders = self.chain.deciders
        while self._index < len(deciders):
            factory = deciders[self._index]
            self._state = _RUNNING
            self._settled = False
            try:
                if len(self._filters) == self._index:
                    self._filters.append(factory.create())
                v = self._filters[self._index].on_connect(self.facts, self)
            except Exception:
                log.exception("network filter %s raised in on_connect (listener %s)",
                              factory.name, self.chain.listener)
                self.chain.count_error(factory.name, "on_connect")
                self._finish(FILTER_ERROR, factory.name)
                return
            if v is STOP:
                if not self._settled:
                    self._state = _STOPPED
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(factory.stop_timeout, self._timed_out)
                    return
                v = CONTINUE if self._early is None else self._early
            if v is CONTINUE:
                self._index += 1
                continue
            if isinstance(v, Reject):
                self._finish(v, factory.name)
                return
            log.error("network filter %s answered %r (listener %s)", factory.name, v,
                      self.chain.listener)
            self.chain.count_error(factory.name, "on_connect")
            self._finish(FILTER_ERROR, factory.name)
            return
        self._finish(None, "")

    def _finish(self, verdict: Reject | None, by: str) -> None:
        self._state = _DONE
        self.verdict = verdict
        if verdict is not None:
            self.rejected_by = by
            self.chain.count_rejection(by, verdict.reason)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- Control: what a stopped filter calls ----------------------------------------------

    def resume(self) -> None:
        self._settle(None)

    def reject(self, reason: str) -> None:
        self._settle(Reject(reason))

    def _settle(self, verdict: Reject | None) -> None:
        if self._state == _RUNNING:
            self._settled = True  # from inside its own on_connect: as if it had answered so
            self._early = verdict
            return
        if self._state != _STOPPED:
            return  # after the bound, a cancel, or twice: ignored
        self._cancel_timer()
        if verdict is None:
            self._index += 1
            self._advance()
        else:
            self._finish(verdict, self.chain.deciders[self._index].name)

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == _STOPPED:
            self._finish(TIMEOUT, self.chain.deciders[self._index].name)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- close -------------------------------------------------------------------------------

    def closed(self, record: ConnectionRecord) -> None:
        """The connection is over: `on_close` for each decider that saw it, then observers."""
        self._cancel_timer()
        self._state = _DONE
        if self.verdict is not None:  # (a relay revoked later carries its own, `TcpProxy`)
            record.rejected_by = self.rejected_by
            record.reject_reason = self.verdict.reason
        chain = self.chain
        for i, f in enumerate(self._filters):
            try:
                f.on_close(record)
            except Exception:
                log.exception("network filter %s raised in on_close (listener %s)",
                              chain.deciders[i].name, chain.listener)
                chain.count_error(chain.deciders[i].name, "on_close")
        for factory in chain.observers:
            try:
                factory.create().on_close(record)
            except Exception:
                log.exception("network filter %s raised in on_close (listener %s)",
                              factory.name, chain.listener)
                chain.count_error(factory.name, "on_close")
