"""Load balancers: choose an endpoint of a cluster for one request.

Every balancer implements `LoadBalancer.pick(key, avoid)`.  `key` is the request's hash key
(`AttemptRequest.hash_key`, from the route's hash policy): the consistent-hashing balancer
(`Rendezvous`) sends equal keys to the same endpoint while the endpoint set allows it; round
robin, the default, ignores it (as Envoy's does).  `avoid` names endpoints a retry should not
go back to; every balancer skips them while another healthy endpoint exists, and picks among
them rather than fail when none does (one endpoint: a retry goes to it again).  P2C
least-request and peak-EWMA read the per-endpoint `active` / `ewma` state that the attempt
layer maintains (`attempt.py`), so adding them is a new class here and one line in `build`.
Balancers are built per cluster runtime; `EndpointState` objects (and their counters) carry
over.  An endpoint-only change calls `set_endpoints` on the balancer in force: it takes the new
list (and weights) and keeps its own state (the round-robin position).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Sequence
from typing import Protocol

NO_AVOID: tuple[EndpointState, ...] = ()


class EndpointState:
    """Per-endpoint runtime state shared by balancers, pools and (later) health checking."""

    __slots__ = ("active", "address", "ewma", "healthy", "key", "port", "seed", "weight", "zone")

    def __init__(self, address: str, port: int, weight: int = 1, zone: str = "") -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.zone = zone
        self.key = f"{address}:{port}"
        self.active = 0
        """Requests (HTTP attempts, TCP relays) in flight to this endpoint (least-request)."""
        self.ewma = 0.0
        """Time to the response head in seconds, exponentially weighted (from 0)."""
        self.healthy = True
        self.seed = _mix(zlib.crc32(self.key.encode()))
        """A stable hash of `key` (the same in every process) for consistent hashing."""


def _mix(x: int) -> int:
    """splitmix64's finaliser: spreads the bits of a 64-bit value."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class LoadBalancer(Protocol):
    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None: ...

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None: ...


class RoundRobin:
    """Round robin; with unequal weights, nginx's smooth weighted round robin (O(n) a pick,
    spreads a heavy endpoint's turns out instead of sending them back to back)."""

    __slots__ = ("_current", "_endpoints", "_i", "_total", "_weighted")

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self._i = 0
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._weighted = len({e.weight for e in endpoints}) > 1
        self._current = [0] * len(self._endpoints)
        self._total = sum(e.weight for e in endpoints)

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        eps = self._endpoints
        n = len(eps)
        if n == 1:  # (a sidecar's inbound cluster: one endpoint, nothing to choose)
            ep = eps[0]
            return ep if ep.healthy else None
        if n == 0:
            return None
        if not self._weighted:
            for _ in range(n):
                ep = eps[self._i % n]
                self._i += 1
                if ep.healthy and (not avoid or ep not in avoid):
                    return ep
            return self.pick(key) if avoid else None
        best = -1
        cur = self._current
        total = 0
        for i, ep in enumerate(eps):
            if not ep.healthy or (avoid and ep in avoid):
                continue
            cur[i] += ep.weight
            total += ep.weight
            if best < 0 or cur[i] > cur[best]:
                best = i
        if best < 0:
            return self.pick(key) if avoid else None
        cur[best] -= total
        return eps[best]


class Rendezvous:
    """Consistent hashing by highest random weight: an endpoint's score for a key is a hash of
    both; the highest healthy score wins.  Equal keys go to the same endpoint; removing an
    endpoint moves only its own keys, adding one takes ~1/n of them.  O(n) a pick (fine for the
    tens of endpoints a cluster has; Maglev's table is the answer for thousands).  Weights
    scale the score (Resch's weighted rendezvous, -w / ln u).  A request without a key falls
    back to round robin."""

    __slots__ = ("_endpoints", "_rr")

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self._rr = RoundRobin(endpoints)
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._rr.set_endpoints(endpoints)

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        if key is None:
            return self._rr.pick(None, avoid)
        ep = self._best(key, avoid)
        return ep if ep is not None or not avoid else self._best(key, NO_AVOID)

    def _best(self, key: int, avoid: Collection[EndpointState]) -> EndpointState | None:
        best: EndpointState | None = None
        top = -1.0
        k = key & 0xFFFFFFFFFFFFFFFF
        for ep in self._endpoints:
            if not ep.healthy or (avoid and ep in avoid):
                continue
            u = (_mix(k ^ ep.seed) >> 11) * (1.0 / 9007199254740992.0)  # [0, 1)
            score = ep.weight / -math.log(u) if u > 0.0 else 0.0
            if score > top:
                best, top = ep, score
        return best


def build(policy: str, endpoints: Sequence[EndpointState]) -> LoadBalancer:
    """The balancer of `policy` (`lb_policy`; `rendezvous` is not in the contract yet: the
    traffic-management issue adds the hash policies that feed it keys)."""
    if policy == "round_robin":
        return RoundRobin(endpoints)
    if policy == "rendezvous":
        return Rendezvous(endpoints)
    raise ValueError(f"unknown lb_policy {policy!r}")
