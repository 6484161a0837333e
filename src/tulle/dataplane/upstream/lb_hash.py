"""Consistent hashing: ring hash (Ketama), Maglev, and the request's hash key.

Why: session affinity.  Equal keys go to the same endpoint while the endpoint set allows it,
in every proxy (hashes are stable across processes: crc32 + splitmix, no `hash()`), and an
endpoint leaving moves only about its own share of the keys.

* `RingHash`: each endpoint owns `ring_points x weight` points on a 64-bit ring (a number
  that does not depend on the other endpoints: one leaving moves only its own keys); a key
  goes to the first point at or after it (bisect: O(log points)).
* `Maglev`: Google's lookup table of `table_size` (a prime) slots, filled from each endpoint's
  own permutation in weighted turns; a key is one index (O(1)), spread more evenly than the
  ring at the cost of a build (O(M log M)) per endpoint change.
* A key whose endpoint is unhealthy or to avoid goes to the next usable one (the ring's next
  point; for Maglev a rehash, then the usable endpoint with the best rendezvous score), so it
  stays consistent while that endpoint is out.  Panic mode applies as everywhere.
* `hash_key(head, policies)`: the first hash policy that finds a value in the request gives
  the key (header, cookie, source IP — the address this proxy appended to x-forwarded-for —
  or query parameter); None when none does, and the pick is then random among the usable.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Collection, Sequence
from typing import Final

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.upstream.lb import NO_AVOID, EndpointState, Options, Panic, _mix
from tulle.proxyconfig.model import HashPolicy

HASHING = frozenset({"ring_hash", "maglev", "rendezvous"})
"""Policies that take a key (locality does not wrap them: affinity wins)."""

_M64: Final = 0xFFFFFFFFFFFFFFFF


def _h(value: bytes) -> int:
    return _mix(zlib.crc32(value) | (zlib.adler32(value) << 32))


def _fallback(eps: Sequence[EndpointState], key: int | None,
              opts: Options) -> EndpointState | None:
    """A usable endpoint for a key whose own is out (best rendezvous score), or at random
    for a request without a key."""
    if not eps:
        return None
    if key is None:
        return eps[int(opts.rng.random() * len(eps))]
    return max(eps, key=lambda e: _mix((key ^ e.seed) & _M64))


class RingHash:
    """Ketama ring (see the module docstring)."""

    __slots__ = ("_endpoints", "_opts", "_owners", "_panic", "_points")

    def __init__(self, endpoints: Sequence[EndpointState], opts: Options | None = None) -> None:
        self._opts = opts if opts is not None else Options()
        self._panic = Panic()
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._panic.reset()
        ring: list[tuple[int, int]] = []
        for i, e in enumerate(endpoints):
            n = self._opts.ring_points * e.weight
            ring.extend((_mix((e.seed + j * 0x9E3779B97F4A7C15) & _M64), i) for j in range(n))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [endpoints[i] for _, i in ring]

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        owners = self._owners
        if not owners:
            return None
        if key is None:
            return _fallback(self._opts.usable(self._endpoints, avoid), None, self._opts)
        n = len(owners)
        i = bisect.bisect_left(self._points, _mix(key & _M64)) % n
        ep = owners[i]
        if ((ep.healthy or self._panic(self._endpoints, self._opts.panic))
                and (not avoid or ep not in avoid)):
            return ep
        ok = set(self._opts.usable(self._endpoints, avoid))
        for step in range(1, n):
            ep = owners[(i + step) % n]
            if ep in ok:
                return ep
        return None


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


class Maglev:
    """Maglev lookup table (see the module docstring)."""

    __slots__ = ("_endpoints", "_opts", "_panic", "_table")

    def __init__(self, endpoints: Sequence[EndpointState], opts: Options | None = None) -> None:
        self._opts = opts if opts is not None else Options()
        self._panic = Panic()
        if not _is_prime(self._opts.table_size):
            raise ValueError(f"maglev table size {self._opts.table_size} is not a prime")
        self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        self._endpoints = list(endpoints)
        self._panic.reset()
        self._table = _populate(self._endpoints, self._opts.table_size)

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        table = self._table
        if not table:
            return None
        if key is None:
            return _fallback(self._opts.usable(self._endpoints, avoid), None, self._opts)
        k = key & _M64
        m = len(table)
        for _ in range(4):  # the key's slot, then a few rehashes
            ep = table[_mix(k) % m]
            if ((ep.healthy or self._panic(self._endpoints, self._opts.panic))
                    and (not avoid or ep not in avoid)):
                return ep
            k = (k + 0x9E3779B97F4A7C15) & _M64
        ok = self._opts.usable(self._endpoints, avoid)
        return _fallback(ok, key & _M64, self._opts)


def _populate(eps: Sequence[EndpointState], m: int) -> list[EndpointState]:
    """The Maglev table: each endpoint walks its own permutation of the slots (offset, skip
    from its seed) and takes the next free one in its turn; an endpoint's turns per round
    are proportional to its weight (Envoy's weighted Maglev)."""
    if not eps:
        return []
    top = max(e.weight for e in eps)
    offset = [e.seed % m for e in eps]
    skip = [(e.seed >> 32) % (m - 1) + 1 for e in eps]
    nxt = [0] * len(eps)
    credit = [0.0] * len(eps)
    table: list[EndpointState | None] = [None] * m
    filled = 0
    while True:
        for i, e in enumerate(eps):
            credit[i] += e.weight / top
            while credit[i] >= 1.0:
                credit[i] -= 1.0
                c = (offset[i] + nxt[i] * skip[i]) % m
                while table[c] is not None:
                    nxt[i] += 1
                    c = (offset[i] + nxt[i] * skip[i]) % m
                table[c] = e
                nxt[i] += 1
                filled += 1
                if filled == m:
                    return [x for x in table if x is not None]


def _query_value(path: bytes, name: bytes) -> bytes | None:
    q = path.find(b"?")
    if q < 0:
        return None
    for part in path[q + 1:].split(b"&"):
        k, _, v = part.partition(b"=")
        if k == name:
            return v
    return None


def _cookie_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == b"cookie":
            for part in v.split(b";"):
                k, _, val = part.strip().partition(b"=")
                if k == name:
                    return val
    return None


def hash_key(head: RequestHead, policies: Sequence[HashPolicy]) -> int | None:
    """The request's key by the first of `policies` that finds a value (module docstring)."""
    for p in policies:
        value: bytes | None = None
        if p.type == "header":
            name = p.name.lower().encode()
            vals = [v for n, v in head.headers if n == name]
            value = b",".join(vals) if vals else None
        elif p.type == "cookie":
            value = _cookie_value(head.headers, p.name.encode())
        elif p.type == "query_parameter":
            value = _query_value(head.path, p.name.encode())
        else:  # source_ip: the last x-forwarded-for hop, the one this proxy appended to the
            # last such field (`dispatch.add_forwarding_headers`); an earlier field's last
            # entry is the client's own text (ADR 0103)
            for n, v in head.headers:
                if n == b"x-forwarded-for":
                    value = v
            if value is not None:
                value = value.rpartition(b",")[2].strip()
        if value is not None:
            return _h(value)
    return None


__all__ = ["HASHING", "Maglev", "RingHash", "hash_key"]
