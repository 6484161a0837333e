"""Balancers that read load: random, least request (power of two choices), peak-EWMA.

Why these three together: they share one shape — draw endpoints at random (weighted when the
weights differ or an endpoint is in its slow start), keep the one that looks least loaded —
and one fast path: when the draw lands on healthy endpoints not to avoid (the common case),
no list is built; only then are the usable endpoints computed (`Options.usable`: health,
panic mode, `avoid`).

Peak-EWMA is the default balancer of a Service (ADR 0038): Linkerd's / Finagle's cost,
`latency x (active + 1)`, where the latency is the endpoint's peak-sensitive EWMA
(`EndpointState.sample`) decayed to now, so a slow endpoint's estimate fades and it is tried
again after a while.  An endpoint without a sample costs 0 while idle (it is tried at once)
and `PENALTY` once a request to it is in flight (it is not flooded before anyone knows how it
answers).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Sequence
from math import exp as _exp
from typing import Final

from tulle.dataplane.upstream.lb import NO_AVOID, EndpointState, Options, Panic

PENALTY: Final = 1e6
"""The cost of an endpoint with requests in flight and no latency sample yet (Finagle's)."""


class _Drawn:
    """The shared part: endpoints, weights and a weighted draw."""

    __slots__ = ("_cum", "_endpoints", "_opts", "_panic", "_uniform")

    def __init__(self, endpoints: Sequence[EndpointState], opts: Options | None = None) -> None:
        self._opts = opts if opts is not None else Options()
        self._panic = Panic()
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._uniform = (len({e.weight for e in endpoints}) <= 1
                         and not (self._opts.slow_start and any(e.added for e in endpoints)))
        """Every weight equal and no ramp: draws are plain indices."""
        self._cum: list[float] = []
        self._panic.reset()

    def _draw(self, eps: Sequence[EndpointState], now: float) -> EndpointState:
        """One endpoint of `eps`, with probability proportional to its weight now."""
        opts = self._opts
        if self._uniform:
            return eps[int(opts.rng.random() * len(eps))]
        cum = self._cum
        cum.clear()
        total = 0.0
        for e in eps:
            total += opts.weight(e, now)
            cum.append(total)
        i = bisect.bisect_right(cum, opts.rng.random() * total)
        return eps[min(i, len(eps) - 1)]

    def _usable(self, avoid: Collection[EndpointState]) -> list[EndpointState]:
        return self._opts.usable(self._endpoints, avoid)


class Random(_Drawn):
    """Weighted random: no state, no coordination; the baseline the others improve on."""

    __slots__ = ()

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        eps = self._endpoints
        if not eps:
            return None
        now = self._opts.clock() if not self._uniform else 0.0
        ep = self._draw(eps, now)
        if ep.healthy and (not avoid or ep not in avoid) and not self._panic(
                eps, self._opts.panic):
            return ep
        usable = self._usable(avoid)
        return self._draw(usable, now) if usable else None


class LeastRequest(_Drawn):
    """Power of `choices` (2) choices: draw that many different endpoints, keep the one with
    the fewest requests in flight for its weight (Envoy's least request)."""

    __slots__ = ()

    def _load(self, ep: EndpointState, now: float) -> float:
        return (ep.active + 1) / self._opts.weight(ep, now)

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        eps = self._endpoints
        n = len(eps)
        if n <= 1:
            return self._single(avoid)
        opts = self._opts
        now = opts.clock()
        if self._uniform and opts.choices == 2:  # the fast path: two different indices
            rnd = opts.rng.random
            i = int(rnd() * n)
            j = int(rnd() * (n - 1))
            if j >= i:
                j += 1
            a, b = eps[i], eps[j]
            if (a._healthy and b._healthy and (not avoid or (a not in avoid and b not in avoid))
                    and not self._panic(eps, opts.panic)):
                return a if self._fast(a, now) <= self._fast(b, now) else b
        return self._choose(self._usable(avoid), now)

    def _fast(self, ep: EndpointState, now: float) -> float:
        """`_load` when every weight is equal and nothing ramps (the fast path)."""
        return float(ep.active)

    def _choose(self, pool: list[EndpointState], now: float) -> EndpointState | None:
        """The least loaded of `choices` different endpoints of `pool`, drawn by weight."""
        if len(pool) <= 1:
            return pool[0] if pool else None
        k = min(self._opts.choices, len(pool))
        if self._uniform:
            drawn = self._opts.rng.sample(pool, k)
        else:
            drawn = []
            for _ in range(4 * k):  # bounded; a heavy endpoint may come up again
                ep = self._draw(pool, now)
                if ep not in drawn:
                    drawn.append(ep)
                    if len(drawn) == k:
                        break
        return min(drawn, key=lambda e: self._load(e, now))

    def _single(self, avoid: Collection[EndpointState]) -> EndpointState | None:
        """Zero or one endpoint (a sidecar's inbound cluster): nothing to compare."""
        eps = self._endpoints
        if not eps:
            return None
        ep = eps[0]
        return ep if ep.healthy or self._opts.panic else None


class PeakEwma(LeastRequest):
    """Power of two choices on `latency x (active + 1)` (see the module docstring)."""

    __slots__ = ()

    def _fast(self, ep: EndpointState, now: float) -> float:
        cost = ep.ewma
        if cost == 0.0:
            return PENALTY + ep.active if ep.active else 0.0
        return cost * _exp((ep.stamp - now) / self._opts.decay) * (ep.active + 1)

    def _load(self, ep: EndpointState, now: float) -> float:
        cost = ep.ewma
        if cost == 0.0:
            return PENALTY + ep.active if ep.active else 0.0
        age = now - ep.stamp
        if age > 0.0:
            cost *= math.exp(-age / self._opts.decay)
        return cost * (ep.active + 1) / self._opts.weight(ep, now)


__all__ = ["PENALTY", "LeastRequest", "PeakEwma", "Random"]
