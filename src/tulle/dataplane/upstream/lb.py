"""Load balancers: choose an endpoint of a cluster for one request.

Every balancer implements `LoadBalancer.pick(key)`.  `key` is the request's hash key for the
consistent-hashing balancers of the traffic-management issue (ring hash, Maglev) and is ignored
by the others; P2C least-request and peak-EWMA read the per-endpoint `active` / latency state that
`EndpointState` already carries, so adding them is a new class here and one line in `build`.
Balancers are built per cluster runtime; `EndpointState` objects (and their counters) carry
over.  An endpoint-only change calls `set_endpoints` on the balancer in force: it takes the new
list (and weights) and keeps its own state (the round-robin position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EndpointState:
    """Per-endpoint runtime state shared by balancers, pools and (later) health checking."""

    __slots__ = ("active", "address", "healthy", "key", "port", "weight", "zone")

    def __init__(self, address: str, port: int, weight: int = 1, zone: str = "") -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.zone = zone
        self.key = f"{address}:{port}"
        self.active = 0
        """Requests in flight to this endpoint (for least-request)."""
        self.healthy = True


class LoadBalancer(Protocol):
    def pick(self, key: int | None = None) -> EndpointState | None: ...

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

    def pick(self, key: int | None = None) -> EndpointState | None:
        eps = self._endpoints
        n = len(eps)
        if n == 0:
            return None
        if not self._weighted:
            for _ in range(n):
                ep = eps[self._i % n]
                self._i += 1
                if ep.healthy:
                    return ep
            return None
        best = -1
        cur = self._current
        total = 0
        for i, ep in enumerate(eps):
            if not ep.healthy:
                continue
            cur[i] += ep.weight
            total += ep.weight
            if best < 0 or cur[i] > cur[best]:
                best = i
        if best < 0:
            return None
        cur[best] -= total
        return eps[best]


def build(policy: str, endpoints: Sequence[EndpointState]) -> LoadBalancer:
    if policy == "round_robin":
        return RoundRobin(endpoints)
    raise ValueError(f"unknown lb_policy {policy!r}")
