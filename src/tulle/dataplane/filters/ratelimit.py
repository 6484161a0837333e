"""The `RateLimit` filter: local token buckets and a global Redis window, 429 past them.

Config: `proxyconfig/filters/ratelimit.py`; state: `dataplane/ratelimit/`.  Position: after
authz (refused callers spend nothing), before faults and everything that does work
(`chain.ORDER`).

Local: a bucket per route, per source (the verified SPIFFE ID when the connection is mTLS,
else the peer IP) or per header value (values over 128 bytes keyed by their SipHash; at most
`max_buckets` keys, LRU).  Checked synchronously: an admitted request costs a dict lookup and
a subtraction.

Global: one pipelined round trip to Redis (`SET key 0 PX interval NX`, `INCR key`, `PTTL
key`): the first request of a window creates the counter with its expiry, every proxy with the
same key counts in it, and the window ends when Redis expires it (no clock shared between
proxies is needed).  Plain commands every Redis since 2.6.12 has: nothing needs 7.0's
`PEXPIRE ... NX` (ADR 0106).  The request waits (STOP) at most `timeout_ms`; no answer in
time, a refused connection or an error applies `failure_mode` (`open`: the local fallback
bucket decides; `closed`: 429) and is counted in `tulle_proxy_rate_limit_backend_failures_total`.
A counter found without an expiry (the window ended between the `SET` and the `INCR`, or
someone made the key persistent) would never end its window: that request is a backend failure
as well, and the proxy gives the counter its expiry back (`PEXPIRE key interval`, not waited
for), logged once per limiter.

A limited request gets 429 with `retry-after` (whole seconds, at least 1), `ratelimit-policy:
"<scope>";q=<requests>;w=<seconds>` and `ratelimit: "<scope>";r=0;t=<seconds>` (the IETF
draft's structured fields; scope `local` or `global`), flag `RL`; a gRPC request gets
trailers-only `RESOURCE_EXHAUSTED` (8).  Each is counted in
`tulle_proxy_rate_limited_total{listener,policy,scope}`.

Buckets and the Redis client belong to the factory, and carry over a snapshot swap through the
route's state (`adopt`, `routing/state.py`) while their settings stay the same.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from tulle.dataplane.filters.fault import header_value, is_grpc
from tulle.dataplane.http.filter import CONTINUE, STOP, FilterStream, HttpFilter
from tulle.dataplane.ratelimit.buckets import KeyedBuckets, TokenBucket
from tulle.dataplane.ratelimit.redis import RedisClient, encode
from tulle.proxyconfig.filters.ratelimit import split_address

if TYPE_CHECKING:
    from tulle.proxyconfig.filters.ratelimit import GlobalLimit, LocalLimit, RateLimit

log = logging.getLogger("tulle.ratelimit")

LIMITED_BODY = b"rate limited\n"
GRPC_RESOURCE_EXHAUSTED = 8
MAX_KEY = 128


def limited_headers(scope: bytes, quota: int, window_s: int, reset_s: int
                    ) -> tuple[tuple[bytes, bytes], ...]:
    reset_s = max(1, reset_s)
    return ((b"retry-after", b"%d" % reset_s),
            (b"ratelimit-policy", b'"%s";q=%d;w=%d' % (scope, quota, window_s)),
            (b"ratelimit", b'"%s";r=0;t=%d' % (scope, reset_s)))


def _limited(stream: FilterStream, factory: RateLimitFactory, scope: bytes, quota: int,
             window_s: int, reset_s: int) -> None:
    stream.record.flags = "RL"
    stream.counters.rate_limited(factory.policy, scope.decode())
    headers = limited_headers(scope, quota, window_s, reset_s)
    if is_grpc(stream.head):
        headers += ((b"grpc-status", b"%d" % GRPC_RESOURCE_EXHAUSTED),)
    stream.reply(429, LIMITED_BODY, headers)


class LocalLimiter:
    """The local limit of one factory: one bucket, or keyed buckets."""

    __slots__ = ("by", "header", "keyed", "quota", "single", "window_s")

    def __init__(self, cfg: LocalLimit, now: float) -> None:
        interval = cfg.interval_ms / 1000.0
        self.by = cfg.by
        self.header = (cfg.header or "").lower().encode()
        self.quota = cfg.requests
        self.window_s = max(1, math.ceil(interval))
        self.single = TokenBucket(cfg.requests, interval, now) if cfg.by == "route" else None
        self.keyed = KeyedBuckets(cfg.requests, interval, cfg.max_buckets)

    def bucket(self, stream: FilterStream, now: float) -> TokenBucket:
        if self.single is not None:
            return self.single
        if self.by == "source":
            facts = stream.facts
            key = (b"id:" + facts.peer_identity.encode() if facts.peer_identity
                   else b"ip:" + facts.peer_ip)
        else:
            key = header_value(stream.head.headers, self.header) or b""
            if len(key) > MAX_KEY:  # bounded memory per key; SipHash (randomised per process)
                key = b"#" + hash(key).to_bytes(8, "big", signed=True)
        return self.keyed.get(key, now)


class GlobalLimiter:
    """The global limit of one factory: its Redis client, commands and fallback bucket."""

    __slots__ = ("client", "closed", "commands", "fallback", "quota", "repair", "timeout",
                 "warned", "window_s")

    def __init__(self, cfg: GlobalLimit, now: float) -> None:
        address = split_address(cfg.redis)
        assert address is not None  # validated with the config
        tls = cfg.tls
        self.client = RedisClient(*address, username=cfg.username,
                                  password_file=cfg.password_file, tls=tls is not None,
                                  ca_file=tls.ca_file if tls else "",
                                  server_name=tls.server_name if tls else "")
        self.warned = False
        """A counter without an expiry was logged (once per limiter)."""
        key = b"tulle:rl:" + cfg.key.encode()
        interval = b"%d" % cfg.interval_ms
        self.commands = (encode(b"SET", key, b"0", b"PX", interval, b"NX"),
                         encode(b"INCR", key),
                         encode(b"PTTL", key))
        self.repair = encode(b"PEXPIRE", key, interval)
        """Gives a counter found without an expiry its window's end back."""
        self.quota = cfg.requests
        self.window_s = max(1, math.ceil(cfg.interval_ms / 1000.0))
        self.timeout = cfg.timeout_ms / 1000.0
        self.closed = cfg.failure_mode == "closed"
        self.fallback = (TokenBucket(cfg.fallback_requests, cfg.interval_ms / 1000.0, now)
                         if cfg.fallback_requests else None)


class _LocalFilter(HttpFilter):
    """A route with only a local limit: no per-request state, one instance serves all."""

    __slots__ = ("factory",)

    def __init__(self, factory: RateLimitFactory) -> None:
        self.factory = factory

    def on_request_head(self, stream: FilterStream) -> int:
        f = self.factory
        local = f.local
        assert local is not None
        now = asyncio.get_running_loop().time()
        b = local.bucket(stream, now)
        if b.take(now):
            return CONTINUE
        _limited(stream, f, b"local", local.quota, local.window_s, math.ceil(b.wait(now)))
        return STOP


class _RateLimitFilter(HttpFilter):
    __slots__ = ("factory", "futures", "stream", "timer")

    def __init__(self, factory: RateLimitFactory) -> None:
        self.factory = factory
        self.stream: FilterStream | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.futures: list[asyncio.Future[int | bytes | None]] = []

    def on_request_head(self, stream: FilterStream) -> int:
        f = self.factory
        loop = asyncio.get_running_loop()
        now = loop.time()
        local = f.local
        if local is not None:
            b = local.bucket(stream, now)
            if not b.take(now):
                _limited(stream, f, b"local", local.quota, local.window_s, math.ceil(b.wait(now)))
                return STOP
        g = f.global_
        if g is None:
            return CONTINUE
        self.futures = futures = g.client.call(*g.commands)
        if futures[-1].done():  # down: decided now, without waiting
            return self._fail(stream, g, now)
        self.stream = stream
        self.timer = loop.call_later(g.timeout, self._timed_out)
        futures[-1].add_done_callback(self._answered)
        return STOP

    def _fail(self, stream: FilterStream, g: GlobalLimiter, now: float) -> int:
        stream.counters.rate_limit_backend_failure(self.factory.policy)
        for fut in self.futures:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: nothing logged for a reply we no longer want
        if g.closed:
            _limited(stream, self.factory, b"global", g.quota, g.window_s, g.window_s)
            return STOP
        fb = g.fallback
        if fb is not None and not fb.take(now):
            _limited(stream, self.factory, b"global", g.quota, g.window_s, math.ceil(fb.wait(now)))
            return STOP
        return CONTINUE

    def _timed_out(self) -> None:
        self.timer = None
        stream = self.stream
        g = self.factory.global_
        if stream is None or g is None:
            return
        self.stream = None
        if self._fail(stream, g, asyncio.get_running_loop().time()) == CONTINUE:
            stream.resume()

    def _answered(self, last: asyncio.Future[int | bytes | None]) -> None:
        stream = self.stream
        g = self.factory.global_
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if stream is None or g is None:
            for fut in self.futures:
                if not fut.cancelled():
                    fut.exception()
            return
        self.stream = None
        _, count, pttl = (fut.result() if fut.exception() is None else fut.exception()
                          for fut in self.futures)
        if not isinstance(count, int) or not isinstance(pttl, int) or pttl == -1:
            if isinstance(count, int) and pttl == -1:
                self._repair(g)
            if self._fail(stream, g, asyncio.get_running_loop().time()) == CONTINUE:
                stream.resume()
            return
        if count <= g.quota:
            stream.resume()
            return
        reset = math.ceil(pttl / 1000.0) if isinstance(pttl, int) and pttl > 0 else g.window_s
        _limited(stream, self.factory, b"global", g.quota, g.window_s, reset)

    def _repair(self, g: GlobalLimiter) -> None:
        """A counter without an expiry: its window would never end, and past the quota every
        request would be refused for good.  Give it the window's expiry back, without waiting
        (the next request reads the result)."""
        if not g.warned:
            g.warned = True
            log.warning("rate limit %s: the counter in redis %s:%d had no expiry (made "
                        "persistent?); it is given one again, and failure_mode decided",
                        self.factory.policy, g.client.host, g.client.port)
        for fut in g.client.call(g.repair):
            fut.add_done_callback(_retrieve)

    def on_done(self, stream: FilterStream) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.stream = None


def _retrieve(fut: asyncio.Future[int | bytes | None]) -> None:
    """Marks a reply nobody waits for as seen (nothing logged for its error)."""
    if not fut.cancelled():
        fut.exception()


class _Carried:
    """A factory's state as its successor may adopt it, with the settings it was built for."""

    __slots__ = ("global_", "global_cfg", "local", "local_cfg")

    def __init__(self, local_cfg: LocalLimit | None, local: LocalLimiter | None,
                 global_cfg: GlobalLimit | None, global_: GlobalLimiter | None) -> None:
        self.local_cfg = local_cfg
        self.local = local
        self.global_cfg = global_cfg
        self.global_ = global_


class RateLimitFactory:
    """Built once per route per snapshot: the buckets and the Redis client live here.  With
    only a local limit the filter is stateless (a request allocates nothing for it)."""

    __slots__ = ("_shared", "filter_type", "global_", "global_cfg", "local", "local_cfg",
                 "policy", "stateless")

    name = "rate_limit"

    def __init__(self, cfg: RateLimit, now: float = 0.0) -> None:
        self.policy = cfg.name or "-"
        self.local_cfg = cfg.local
        self.global_cfg = cfg.global_
        self.local = LocalLimiter(cfg.local, now) if cfg.local is not None else None
        self.global_ = GlobalLimiter(cfg.global_, now) if cfg.global_ is not None else None
        self.stateless = self.global_ is None
        self.filter_type: type[HttpFilter] = (_LocalFilter if self.stateless
                                              else _RateLimitFilter)
        self._shared = _LocalFilter(self)

    def create(self) -> HttpFilter:
        return self._shared if self.stateless else _RateLimitFilter(self)

    def adopt(self, store: dict[str, object]) -> None:
        """Carry state across a snapshot swap (the route's `RouteState.filters`): a limit
        whose settings did not change keeps its buckets (no fresh burst on every config push)
        and its Redis connection; a changed one starts afresh.  Then leave ours for the next."""
        prev = store.get(self.name)
        if isinstance(prev, _Carried):
            if self.local is not None and prev.local is not None and \
                    prev.local_cfg == self.local_cfg:
                self.local = prev.local
            if self.global_ is not None and prev.global_ is not None and \
                    prev.global_cfg == self.global_cfg:
                self.global_ = prev.global_
        store[self.name] = _Carried(self.local_cfg, self.local, self.global_cfg, self.global_)
