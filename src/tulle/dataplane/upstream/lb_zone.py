"""Locality-aware balancing: prefer the caller's zone, spill over as it loses health.

Why a wrapper: the rule is the same whatever balancer runs inside a zone, so it wraps one
balancer for the caller's zone and one for the other zones (any non-hashing `lb_policy`).
The share of requests kept in the caller's zone is Envoy's priority spill-over rule applied
to the two localities: `min(1, 1.4 x healthy / total)` of the local zone's endpoints (1.4 is
Envoy's overprovisioning factor: a zone at >= 72% health keeps all its traffic; at 50% it keeps
70% and the rest spills to the other zones; with none healthy, all of it goes elsewhere).
Panic mode is decided over the whole cluster: when fewer than `panic` percent of all its
endpoints are healthy, a third balancer over every endpoint takes the pick (inside a zone
there is no panic of its own, or a sick zone would keep traffic the others could serve).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence

from tulle.dataplane.upstream.lb import (
    HEALTH_EPOCH,
    NO_AVOID,
    EndpointState,
    LoadBalancer,
    Options,
    Panic,
)

OVERPROVISIONING = 1.4


class Zoned:
    __slots__ = ("_all", "_endpoints", "_factory", "_inner_opts", "_local", "_local_eps",
                 "_opts", "_panic", "_rest", "_share", "_share_epoch")

    def __init__(self, endpoints: Sequence[EndpointState], opts: Options,
                 factory: Callable[[Sequence[EndpointState], Options], LoadBalancer]) -> None:
        self._opts = opts
        self._factory = factory
        inner = copy.copy(opts)
        inner.panic = 0
        inner.local_zone = ""
        self._inner_opts = inner
        self._panic = Panic()
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        zone = self._opts.local_zone
        self._endpoints = list(endpoints)
        self._local_eps = [e for e in endpoints if e.zone == zone]
        rest = [e for e in endpoints if e.zone != zone]
        self._local = self._factory(self._local_eps, self._inner_opts)
        self._rest = self._factory(rest, self._inner_opts)
        self._all = self._factory(self._endpoints, self._opts)
        self._panic.reset()
        self._share_epoch = -1
        self._share = 0.0

    def local_share(self) -> float:
        """The share of requests the caller's zone keeps now (module docstring); recounted
        only after a health change."""
        if self._share_epoch != HEALTH_EPOCH[0]:
            self._share_epoch = HEALTH_EPOCH[0]
            local = self._local_eps
            healthy = sum(1 for e in local if e.healthy)
            self._share = (min(1.0, OVERPROVISIONING * healthy / len(local)) if local
                           else 0.0)
        return self._share

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        if self._panic(self._endpoints, self._opts.panic):
            return self._all.pick(key, avoid)
        share = self.local_share()
        first, second = ((self._local, self._rest) if self._opts.rng.random() < share
                         else (self._rest, self._local))
        ep = first.pick(key, avoid)
        if ep is None or (avoid and ep in avoid):  # e.g. a retry of the zone's one endpoint
            other = second.pick(key, avoid)
            if other is not None and (ep is None or other not in avoid):
                ep = other
        return ep


__all__ = ["OVERPROVISIONING", "Zoned"]
