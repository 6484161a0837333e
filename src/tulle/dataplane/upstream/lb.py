"""Load balancers: choose an endpoint of a cluster for one request.

The module holds the shared parts (endpoint state, the options, round robin, rendezvous,
`build`); the other balancers live beside it, one family per module (`lb_load.py`: random,
least request, peak-EWMA; `lb_hash.py`: ring hash, Maglev and the request's hash key;
`lb_zone.py`: locality-aware spill-over).  ADR 0038.

Every balancer implements `LoadBalancer.pick(key, avoid)`.  `key` is the request's hash key
(`lb_hash.hash_key` from the cluster's hash policies, computed by `ClusterRuntime.open_stream`
only for clusters that have them; or `AttemptRequest.hash_key`): the hashing balancers send
equal keys to the same endpoint while the endpoint set allows it; the others ignore it (as
Envoy's do).  `avoid` names endpoints a retry should not go back to; every balancer skips them
while another usable endpoint exists, and picks among them rather than fail when none does
(one endpoint: a retry goes to it again).  Every balancer skips unhealthy endpoints, and uses
all of them when fewer than the panic threshold are healthy (`Options.usable`, `Panic`).
Least request and peak-EWMA read the per-endpoint `active` / `ewma` state that the attempt
layer maintains (`attempt.py`).  Balancers are built per cluster runtime; `EndpointState`
objects (and their counters) carry over.  An endpoint-only change calls `set_endpoints` on the
balancer in force: it takes the new list (and weights) and keeps its own state (the
round-robin position).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Collection, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from tulle.proxyconfig.model import LoadBalancing

NO_AVOID: Final[tuple[EndpointState, ...]] = ()


class EndpointState:
    """Per-endpoint runtime state shared by balancers, pools, the attempt layer and health
    checking (which sets `healthy`)."""

    __slots__ = ("_healthy", "active", "added", "address", "ewma", "key", "port", "seed",
                 "stamp", "weight", "zone")

    def __init__(self, address: str, port: int, weight: int = 1, zone: str = "") -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.zone = zone
        self.key = f"{address}:{port}"
        self.active = 0
        """Requests (HTTP attempts, TCP relays) in flight to this endpoint (least-request)."""
        self.ewma = 0.0
        """Time to the response head in seconds: a peak-sensitive EWMA (`sample`); 0: no
        sample yet."""
        self.stamp = 0.0
        """When `ewma` was last updated (the monotonic clock)."""
        self._healthy = True
        self.seed = _mix(zlib.crc32(self.key.encode()))
        """A stable hash of `key` (the same in every process) for consistent hashing."""
        self.added = 0.0
        """When the endpoint joined a cluster that already had endpoints (slow start); 0: it
        was there from the start, nothing to warm up."""

    @property
    def healthy(self) -> bool:
        """False while health checks, outlier detection or readiness keep it out (T3)."""
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        if value != self._healthy:
            self._healthy = value
            HEALTH_EPOCH[0] += 1

    def sample(self, rtt: float, now: float) -> None:
        """One latency sample (Finagle's / Linkerd's peak-EWMA): a sample above the estimate
        replaces it at once (a slow endpoint is noticed on its first slow answer); one below
        it pulls it down with a weight that grows with the time since the last sample
        (`DECAY` seconds: recovering takes seconds, not a number of requests)."""
        cost = self.ewma
        if rtt >= cost:
            self.ewma = rtt
        else:
            w = math.exp((self.stamp - now) * INV_DECAY)
            self.ewma = cost * w + rtt * (1.0 - w)
        self.stamp = now


HEALTH_EPOCH: Final = [0]
"""Bumped whenever any endpoint's `healthy` changes: a balancer recomputes whether it is in
panic mode only then (`Panic`), so its fast path costs one comparison."""


class Panic:
    """Whether fewer than `panic` percent of a balancer's endpoints are healthy, recomputed
    only after a health change anywhere (`HEALTH_EPOCH`)."""

    __slots__ = ("_epoch", "_state")

    def __init__(self) -> None:
        self._epoch = -1
        self._state = False

    def reset(self) -> None:
        self._epoch = -1

    def __call__(self, eps: Sequence[EndpointState], threshold: int) -> bool:
        if self._epoch == HEALTH_EPOCH[0]:
            return self._state
        self._epoch = HEALTH_EPOCH[0]
        healthy = sum(1 for e in eps if e._healthy)
        self._state = healthy * 100 < threshold * len(eps)
        return self._state


DECAY: Final = 10.0
"""Seconds over which a latency estimate decays (Linkerd's default)."""
INV_DECAY: Final = 1.0 / DECAY


class Options:
    """A cluster's balancer settings at run time (the contract's `LoadBalancing`), with the
    clock and the random source injected (virtual time and seeded picks in tests)."""

    __slots__ = (
        "choices",
        "clock",
        "decay",
        "local_zone",
        "min_share",
        "panic",
        "ring_points",
        "rng",
        "slow_start",
        "table_size",
    )

    def __init__(self, panic: int = 50, slow_start: float = 0.0, min_share: float = 0.1,
                 local_zone: str = "", choices: int = 2, decay: float = DECAY,
                 ring_points: int = 160, table_size: int = 8191,
                 clock: Callable[[], float] = monotonic,
                 rng: random.Random | None = None) -> None:
        self.panic = panic
        """Percent: with fewer healthy endpoints than this, every endpoint is used."""
        self.slow_start = slow_start
        """Seconds over which a new endpoint's weight ramps up (0: off)."""
        self.min_share = min_share
        """A new endpoint's weight at the start of its ramp, as a share of its weight."""
        self.local_zone = local_zone
        """The caller's zone for locality-aware balancing ("": off)."""
        self.choices = choices
        self.decay = decay
        self.ring_points = ring_points
        self.table_size = table_size
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()

    @classmethod
    def of(cls, cfg: LoadBalancing | None, zone: str = "") -> Options:
        if cfg is None:
            return cls()
        return cls(panic=cfg.panic_threshold_percent,
                   slow_start=cfg.slow_start_window_ms / 1000,
                   min_share=cfg.slow_start_min_percent / 100,
                   local_zone=zone if cfg.locality_aware else "",
                   choices=cfg.choice_count, decay=cfg.ewma_decay_ms / 1000,
                   ring_points=cfg.ring_points, table_size=cfg.maglev_table_size)

    def weight(self, ep: EndpointState, now: float) -> float:
        """`ep`'s weight now: ramped while it is within its slow-start window."""
        added = ep.added
        if added and self.slow_start:
            age = now - added
            if age < self.slow_start:
                return ep.weight * max(self.min_share, age / self.slow_start)
        return float(ep.weight)

    def usable(self, eps: Sequence[EndpointState],
               avoid: Collection[EndpointState]) -> list[EndpointState]:
        """The endpoints a pick may choose from: the healthy ones (all of them when fewer
        than `panic` percent are healthy: Envoy's panic mode), without `avoid` unless that
        leaves none."""
        healthy = [e for e in eps if e._healthy]
        if len(healthy) * 100 < self.panic * len(eps):
            healthy = list(eps)
        if avoid:
            kept = [e for e in healthy if e not in avoid]
            if kept:
                return kept
        return healthy


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
    """Round robin; with unequal weights (or an endpoint in its slow start), nginx's smooth
    weighted round robin (O(n) a pick, spreads a heavy endpoint's turns out instead of sending
    them back to back)."""

    __slots__ = ("_current", "_endpoints", "_i", "_opts", "_panic", "_ramp_until", "_weighted")

    def __init__(self, endpoints: Sequence[EndpointState], opts: Options | None = None) -> None:
        self._i = 0
        self._opts = opts if opts is not None else Options()
        self._panic = Panic()
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        slow = self._opts.slow_start
        self._ramp_until = max((e.added + slow for e in endpoints if e.added), default=0.0)
        """Until when an endpoint may still be in its slow start (0: none is)."""
        self._weighted = len({e.weight for e in endpoints}) > 1 or bool(slow and self._ramp_until)
        self._current = [0.0] * len(self._endpoints)
        self._panic.reset()

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        eps = self._endpoints
        n = len(eps)
        if n == 1:  # (a sidecar's inbound cluster: one endpoint, nothing to choose)
            ep = eps[0]
            return ep if ep._healthy or self._opts.panic else None
        if n == 0:
            return None
        if not self._weighted and not self._panic(eps, self._opts.panic):
            for _ in range(n):
                ep = eps[self._i % n]
                self._i += 1
                if ep._healthy and (not avoid or ep not in avoid):
                    return ep
        return self._slow(avoid)

    def _slow(self, avoid: Collection[EndpointState]) -> EndpointState | None:
        """Weighted, or some endpoints unhealthy or avoided: smooth WRR over the usable ones
        (healthy unless in panic; not avoided unless that leaves none).  No list is built."""
        opts = self._opts
        eps = self._endpoints
        panic = self._panic(eps, opts.panic)
        now = 0.0
        if self._ramp_until:
            now = opts.clock()
            if now >= self._ramp_until:  # every ramp is over
                self._ramp_until = 0.0
                self._weighted = len({e.weight for e in eps}) > 1
        for skip in ((avoid, NO_AVOID) if avoid else (NO_AVOID,)):
            best = -1
            cur = self._current
            total = 0.0
            for i, ep in enumerate(eps):
                if (not panic and not ep._healthy) or (skip and ep in skip):
                    continue
                w = opts.weight(ep, now) if self._ramp_until else float(ep.weight)
                cur[i] += w
                total += w
                if best < 0 or cur[i] > cur[best]:
                    best = i
            if best >= 0:
                cur[best] -= total
                return eps[best]
        return None


class Rendezvous:
    """Consistent hashing by highest random weight: an endpoint's score for a key is a hash of
    both; the highest healthy score wins.  Equal keys go to the same endpoint; removing an
    endpoint moves only its own keys, adding one takes ~1/n of them.  O(n) a pick (fine for the
    tens of endpoints a cluster has; Maglev's table is the answer for thousands).  Weights
    scale the score (Resch's weighted rendezvous, -w / ln u).  A request without a key falls
    back to round robin."""

    __slots__ = ("_endpoints", "_opts", "_rr")

    def __init__(self, endpoints: Sequence[EndpointState], opts: Options | None = None) -> None:
        self._opts = opts if opts is not None else Options()
        self._rr = RoundRobin(endpoints, self._opts)
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._rr.set_endpoints(endpoints)

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        if key is None:
            return self._rr.pick(None, avoid)
        return self._best(key, avoid)

    def _best(self, key: int, avoid: Collection[EndpointState]) -> EndpointState | None:
        best: EndpointState | None = None
        top = -1.0
        k = key & 0xFFFFFFFFFFFFFFFF
        for ep in self._opts.usable(self._endpoints, avoid):
            u = (_mix(k ^ ep.seed) >> 11) * (1.0 / 9007199254740992.0)  # [0, 1)
            score = ep.weight / -math.log(u) if u > 0.0 else 0.0
            if score > top:
                best, top = ep, score
        return best


def build(policy: str, endpoints: Sequence[EndpointState],
          opts: Options | None = None) -> LoadBalancer:
    """The balancer of `policy` (the contract's `lb_policy`, or `rendezvous`, which is not in
    the contract), wrapped for locality when `opts.local_zone` (not the hashing ones)."""
    from tulle.dataplane.upstream import lb_hash, lb_load, lb_zone

    opts = opts if opts is not None else Options()
    factories: dict[str, Callable[[Sequence[EndpointState], Options], LoadBalancer]] = {
        "round_robin": RoundRobin, "rendezvous": Rendezvous, "random": lb_load.Random,
        "least_request": lb_load.LeastRequest, "peak_ewma": lb_load.PeakEwma,
        "ring_hash": lb_hash.RingHash, "maglev": lb_hash.Maglev}
    factory = factories.get(policy)
    if factory is None:
        raise ValueError(f"unknown lb_policy {policy!r}")
    if opts.local_zone and policy not in lb_hash.HASHING:
        return lb_zone.Zoned(endpoints, opts, factory)
    return factory(endpoints, opts)
