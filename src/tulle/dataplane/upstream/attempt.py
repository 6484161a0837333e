"""Upstream attempts: one try of one request on one endpoint, between the router and a pool.

Why a layer of its own (DESIGN.md section 4: cluster: limits -> load balancer pick -> attempt
-> pool): what a retry, outlier detection and a least-request balancer need to know about a
try is the same for both upstream protocols, and a pool should not decide any of it.  For each
try the attempt layer:

* counts it against its cluster's `requests` limit (and `retries`, when the router opened it as
  a retry) and its endpoint's `active` (in-flight) count, released exactly once when the try
  ends: response complete, error, per-try timeout, or the downstream's reset;
* samples the time to the response head into the endpoint's peak-EWMA (`EndpointState.sample`,
  the latency peak-EWMA balancing reads);
* reports every try's outcome, naming the endpoint, to the cluster's `on_outcome` hook (outlier
  detection subscribes): `(endpoint, status, flag, seconds)`, status 0 when no head came, flag
  "" for a response, the error's flag, or "DC" when the downstream reset it;
* enforces the per-try deadline of its `AttemptRequest` (504 `UT`).

Shape: `Attempt` is the base class of every pool's stream (`H1Stream`, `H2UpStream`), not an
object wrapped around it.  A wrapper costs an allocation and a Python call per event on every
request (measured: +1.2 us a request on `bench/micro_http1.py`, ~8%); as a base class the
bookkeeping is a few attribute updates on the object the pool allocates anyway.  The contract
with a pool is small: its stream counts the try in and sets up its fields in `__init__` (the
class docstring says which), calls `_head` on the response head, `_over` when the try ends
well or the downstream resets, `_failed` instead of `sink.on_upstream_error`, and implements
`_rehome` (move the request to another endpoint's pool before anything of it left).

Pools never retry.  They mark a failure `retry_safe` when the upstream cannot have acted on the
request.  One kind of retry-safe failure is a race of connection reuse, not a failure of the
endpoint: a reused keep-alive connection the peer had closed, HTTP/2 REFUSED_STREAM, a stream
above a GOAWAY's last stream id.  No client should see those as a 502, so `_failed` replays
such a request once, transparently, on a freshly picked endpoint (avoiding this one when the
cluster has another), as long as no response came; the replay counts against `max_retries`.
Connect failures and overflows are retry-safe too, but only a route's retry policy (the
router) retries them: retrying them here would change what clients see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from time import monotonic as _now
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import mypyc_attr

from tulle.dataplane.exchange import Headers, ResponseSink, UpstreamError, upstream_timeout
from tulle.dataplane.upstream.lb import NO_AVOID, EndpointState

if TYPE_CHECKING:
    from tulle.dataplane.upstream.limits import Limits

OutcomeHook = Callable[[EndpointState, int, str, float], None]
"""Called once per try: (endpoint, status, flag, seconds from the try's start to its end)."""

# Latency samples use the monotonic clock itself, not the loop's: uvloop's has millisecond
# steps, which would make every local sub-millisecond answer sample 0.

_NO_REPLAY: Final = frozenset({"UF", "UO"})
"""Retry-safe failures the attempt leaves to the router's retry policy."""

now = _now
"""The clock of `Attempt.start` (for pools' `__init__`)."""


class AttemptRequest:
    """What the router asks of a cluster for one try, beyond the request itself.

    Build one per route per snapshot when nothing in it varies per request (a route without a
    hash policy or retries passes None and pays for nothing)."""

    __slots__ = ("avoid", "hash_key", "per_try_timeout", "prefer", "retry")

    def __init__(self, hash_key: int | None = None,
                 avoid: Collection[EndpointState] = NO_AVOID, per_try_timeout: float = 0.0,
                 retry: bool = False, prefer: EndpointState | None = None) -> None:
        self.hash_key = hash_key
        """The request's hash for consistent-hashing balancers; None: no affinity."""
        self.avoid = avoid
        """Endpoints to avoid (where earlier tries failed) while the cluster has others."""
        self.per_try_timeout = per_try_timeout
        """Seconds this try may take to its response's end (0: no per-try limit)."""
        self.retry = retry
        """This try is a retry: it counts against the cluster's `max_retries`."""
        self.prefer = prefer
        """The endpoint this try goes to, before the balancer is asked, while it is one of
        the cluster's endpoints, healthy and not avoided (session persistence, ADR 0058);
        None: the balancer picks."""


class TryOptions:
    """What few tries have: the router's request, a per-try timer, being a retry or a replay.
    Kept apart so that the common try sets one field for all of them (`Attempt.opts`)."""

    __slots__ = ("replayed", "request", "retry", "timer")

    def __init__(self) -> None:
        self.request: AttemptRequest | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.retry = False
        """Counts against the cluster's retries (opened as a retry, or replayed)."""
        self.replayed = False


@mypyc_attr(allow_interpreted_subclasses=True)  # HTTP/2 and tests subclass it (ADR 0052)
class Attempt:
    """One try of a request: the base of a pool's stream (see the module docstring).

    A subclass has `pool` (with `endpoint`, `limits`, `cluster`) and `sink`, and in `__init__`
    counts the try in (`pool.limits.requests`, `pool.endpoint.active`) and sets `status` 0,
    `try_done` False, `opts` None and `start` `now()`."""

    __slots__ = ("opts", "pool", "sink", "start", "status", "try_done")

    pool: Any
    sink: ResponseSink
    status: int
    """The response's status once its head came (0 before)."""
    start: float
    """When the try began (`now()`): the latency sample's and the outcome's origin."""
    try_done: bool
    """Counted out (`_over`); nothing more is counted or reported for this try."""
    opts: TryOptions | None

    @property
    def endpoint_key(self) -> str:
        """`address:port` of the endpoint this try went to (for the request's record)."""
        return str(self.pool.endpoint.key)

    def _options(self) -> TryOptions:
        opts = self.opts
        if opts is None:
            opts = self.opts = TryOptions()
        return opts

    def _start_try(self, request: AttemptRequest) -> None:
        """The router's extras for this try: the retry count and the per-try deadline."""
        opts = self._options()
        opts.request = request
        if request.retry:
            opts.retry = True
            self.pool.limits.retries += 1
        if request.per_try_timeout > 0:
            opts.timer = self.pool.cluster.loop.call_later(request.per_try_timeout,
                                                           self._timed_out)

    def _head(self, status: int) -> None:
        """The response head arrived: its status, and the endpoint's latency sample.  (The
        HTTP/1 pool inlines this on its hot path.)"""
        if not self.status:
            self.status = status
            t = _now()
            self.pool.endpoint.sample(t - self.start, t)

    def _over(self, status: int, flag: str) -> None:
        """The try is over: release what it counted, report its outcome (once)."""
        if self.try_done:
            return
        self.try_done = True
        pool = self.pool
        ep = pool.endpoint
        ep.active -= 1
        limits = pool.limits
        limits.requests -= 1
        opts = self.opts
        if opts is not None:
            if opts.retry:
                limits.retries -= 1
            timer = opts.timer
            if timer is not None:
                opts.timer = None
                timer.cancel()
        hook = pool.cluster.on_outcome
        if hook is not None:
            hook(ep, status, flag, _now() - self.start)

    def _failed(self, error: UpstreamError) -> None:
        """The pool's failure of this try: replayed when it is a race of connection reuse,
        else counted out and told to the downstream."""
        if (error.retry_safe and not self.try_done and self.status == 0
                and error.flag not in _NO_REPLAY
                and (self.opts is None or not self.opts.replayed) and self._replay(error)):
            return
        self._over(self.status or error.status, error.flag)
        self.sink.on_upstream_error(error)

    def _timed_out(self) -> None:
        opts = self.opts
        assert opts is not None and opts.request is not None
        opts.timer = None
        if self.try_done:
            return
        error = upstream_timeout(f"upstream try timed out after "
                                 f"{opts.request.per_try_timeout:g}s ({self.pool.endpoint.key}, "
                                 f"cluster {self.pool.cluster.name})")
        self._over(self.status or error.status, error.flag)
        self.reset()  # (counted out already: the reset's DC is not reported)
        self.sink.on_upstream_error(error)

    def _replay(self, error: UpstreamError) -> bool:
        """Send the request again after a race of connection reuse; False: not possible."""
        old_pool = self.pool
        cluster = old_pool.cluster
        limits: Limits = old_pool.limits
        if limits.retries >= limits.max_retries:
            limits.overflow("retries")
            return False
        old = old_pool.endpoint
        opts = self._options()
        request = opts.request
        ep = cluster.lb.pick(request.hash_key if request is not None else None, (old,))
        if ep is None:
            return False
        hook = cluster.on_outcome
        if hook is not None:
            hook(old, error.status, error.flag, _now() - self.start)
        old.active -= 1
        ep.active += 1
        opts.replayed = True
        if not opts.retry:
            opts.retry = True
            limits.retries += 1
        self.start = _now()
        try:
            self._rehome(cluster.pool_for(ep))
        except UpstreamError as err:  # the new pool's pending limit
            self._over(err.status, err.flag)
            self.sink.on_upstream_error(err)
        return True

    def reset(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        """The router retries past this try's response (a retried status): the try is over as
        the response it got (its outcome is that status, not the downstream's reset), and its
        exchange is given up.  A pool whose connection outlives a reset stream (HTTP/2) needs
        nothing more; the HTTP/1 pool overrides this to keep a complete response's
        connection."""
        self._over(self.status, "")
        self.reset()  # (counted out already: the reset's DC is not reported)

    def _rehome(self, pool: Any) -> None:
        """Put this request on `pool` (another endpoint's) as if it were new."""
        raise NotImplementedError


class Refused:
    """A try a cluster limit refused before it began: reports `error` from the loop (never
    from inside `open_stream`), unless the router resets it first."""

    __slots__ = ("error", "handle", "sink")

    def __init__(self, sink: ResponseSink, error: UpstreamError,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.error = error
        self.handle: asyncio.Handle | None = loop.call_soon(self._report)

    def _report(self) -> None:
        self.handle = None
        self.sink.on_upstream_error(self.error)

    @property
    def endpoint_key(self) -> str:
        """No endpoint: the limit refused the try before one was picked."""
        return ""

    def send_data(self, data: bytes) -> None:
        pass

    def send_end(self, trailers: Headers | None = None) -> None:
        pass

    def reset(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()

    def pause_response(self) -> None:
        pass

    def resume_response(self) -> None:
        pass
