"""Upstream attempts: one try of one request on one endpoint, between the router and a pool.

Why a layer of its own (DESIGN.md section 4: cluster: limits -> load balancer pick -> attempt
-> pool): what a retry, outlier detection and a least-request balancer need to know about a
try is the same for both upstream protocols, and a pool should not have to know any of it.  An
`Attempt` sits between the two interfaces of `exchange.py`: to the router (today the drivers)
it is the `UpstreamStream` it opened (and the `TunnelStream` after an upgrade); to the pool it
is the `ResponseSink`.  It forwards every call, and on the way:

* counts the try against its cluster's `requests` limit (and `retries`, when the router opened
  it as a retry) and its endpoint's `active` (in-flight) count, released exactly once when the
  try ends: response complete, error, per-try timeout, or the downstream's reset;
* samples the time to the response head into the endpoint's `ewma` (latency for peak-EWMA);
* reports every try's outcome, naming the endpoint, to the cluster's `on_outcome` hook (outlier
  detection subscribes): `(endpoint, status, flag, seconds)`, status 0 when no head came, flag
  "" for a response, the error's flag, or "DC" when the downstream reset it;
* enforces the per-try deadline of its `AttemptRequest` (504 `UT`).

Pools never retry.  They mark a failure `retry_safe` when the upstream cannot have acted on the
request.  One kind of retry-safe failure is a race of connection reuse, not a failure of the
endpoint: a reused keep-alive connection the peer had closed, HTTP/2 REFUSED_STREAM, a stream
above a GOAWAY's last stream id.  No client should see those as a 502, so the attempt replays
such a request once, transparently, on a freshly picked endpoint (avoiding this one when the
cluster has another), as long as no body left and no response came; the replay counts against
`max_retries`.  Connect failures and overflows are retry-safe too, but only a route's retry
policy (the router) retries them: retrying them here would change what clients see.

Hot path: one object per try (no closures, no per-call allocation); the per-try timer exists
only when a deadline is set; the outcome hook is called only when someone subscribed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from time import monotonic as _now
from typing import TYPE_CHECKING

from tulle.dataplane.exchange import (
    Headers,
    RequestHead,
    ResponseHead,
    ResponseSink,
    TunnelStream,
    UpstreamError,
    upstream_timeout,
)
from tulle.dataplane.upstream.lb import NO_AVOID, EndpointState

if TYPE_CHECKING:
    from tulle.dataplane.upstream.cluster import ClusterRuntime, PoolStream
    from tulle.dataplane.upstream.limits import Limits

OutcomeHook = Callable[[EndpointState, int, str, float], None]
"""Called once per try: (endpoint, status, flag, seconds from the try's start to its end)."""

EWMA_WEIGHT = 0.3
"""Weight of a new latency sample in an endpoint's `ewma` (about the last 5 samples count).
Samples use the monotonic clock itself, not the loop's: uvloop's has millisecond steps, which
would make every local sub-millisecond answer sample 0."""

_NO_REPLAY = frozenset({"UF", "UO"})
"""Retry-safe failures the attempt leaves to the router's retry policy."""


class AttemptRequest:
    """What the router asks of a cluster for one try, beyond the request itself.

    Build one per route per snapshot when nothing in it varies per request (a route without a
    hash policy or retries passes None and pays for nothing)."""

    __slots__ = ("avoid", "hash_key", "per_try_timeout", "retry")

    def __init__(self, hash_key: int | None = None,
                 avoid: Collection[EndpointState] = NO_AVOID, per_try_timeout: float = 0.0,
                 retry: bool = False) -> None:
        self.hash_key = hash_key
        """The request's hash for consistent-hashing balancers; None: no affinity."""
        self.avoid = avoid
        """Endpoints to avoid (where earlier tries failed) while the cluster has others."""
        self.per_try_timeout = per_try_timeout
        """Seconds this try may take to its response's end (0: no per-try limit)."""
        self.retry = retry
        """This try is a retry: it counts against the cluster's `max_retries`."""


class Attempt:
    """One try: the `UpstreamStream` (and `TunnelStream`) the router holds, the `ResponseSink`
    the pool reports to.

    Body bytes and read ends do not pass through it: once the pool stream is open, its `down`
    is pointed at the downstream sink, so the attempt sees only the events that change the
    try's state (head, end, error, upgrade) and costs no call per chunk."""

    __slots__ = ("body_sent", "cluster", "done", "ended", "ep", "paused", "replayed", "request",
                 "retry", "sink", "start", "status", "stream", "timer", "trailers")
    stream: PoolStream | None
    """The pool's exchange of this try (None once the try is over, or before a replay)."""

    def __init__(self, cluster: ClusterRuntime, ep: EndpointState, head: RequestHead,
                 sink: ResponseSink, end_stream: bool, request: AttemptRequest | None) -> None:
        self.cluster = cluster
        self.ep = ep
        self.sink = sink
        self.ended = end_stream
        self.request = request
        limits = cluster.limits  # (the same object for the runtime's life: no need to keep it)
        self.status = 0
        self.done = self.replayed = self.body_sent = self.paused = self.retry = False
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None
        limits.requests += 1
        ep.active += 1
        if request is not None and request.retry:
            self.retry = True
            limits.retries += 1
        self.start = _now()
        pool = cluster.pools.get(ep.key)
        if pool is None:
            pool = cluster.pool_for(ep)
        try:  # (what `_open` does, inlined on the hot path)
            s = self.stream = pool.open_stream(head, self, end_stream)
        except UpstreamError as err:  # a pool's limit (pending): reported from the loop
            self.stream = None
            self.timer = cluster.loop.call_soon(self._fail, err)
            return
        s.down = sink
        if request is not None and request.per_try_timeout > 0:
            self.timer = cluster.loop.call_later(request.per_try_timeout, self._timed_out)

    def _open(self, head: RequestHead, end_stream: bool) -> None:
        """Open the request on `self.ep`'s pool (a replay)."""
        cluster = self.cluster
        self.start = _now()
        try:
            s = self.stream = cluster.pool_for(self.ep).open_stream(head, self, end_stream)
        except UpstreamError as err:
            self.stream = None
            self.timer = cluster.loop.call_soon(self._fail, err)
            return
        s.down = self.sink
        request = self.request
        if request is not None and request.per_try_timeout > 0:
            self.timer = cluster.loop.call_later(request.per_try_timeout, self._timed_out)

    # -- UpstreamStream / TunnelStream (from the router) ----------------------------------

    def send_data(self, data: bytes) -> None:
        if data:
            self.body_sent = True
        s = self.stream
        if s is not None:
            s.send_data(data)

    def send_end(self, trailers: Headers | None = None) -> None:
        self.ended = True
        self.trailers = trailers
        s = self.stream
        if s is not None:
            s.send_end(trailers)

    def reset(self) -> None:
        s, self.stream = self.stream, None
        if s is not None:
            s.reset()
        self._finish(self.status, "DC")

    def close(self) -> None:
        self.reset()

    def send_eof(self) -> None:
        s = self.stream
        if s is not None:
            s.send_eof()  # type: ignore[attr-defined]  # only after an upgrade: a tunnel

    def pause_response(self) -> None:
        self.paused = True
        s = self.stream
        if s is not None:
            s.pause_response()

    def resume_response(self) -> None:
        self.paused = False
        s = self.stream
        if s is not None:
            s.resume_response()

    # -- ResponseSink (from the pool) -----------------------------------------------------

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        if not self.status:
            self.status = head.status
            ep = self.ep
            ep.ewma += EWMA_WEIGHT * (_now() - self.start - ep.ewma)
        if end_stream:
            self._finish(head.status, "")
        self.sink.on_response_head(head, end_stream)

    def on_informational(self, head: ResponseHead) -> None:
        self.sink.on_informational(head)

    def on_response_data(self, data: bytes) -> None:
        self.sink.on_response_data(data)  # (only before `down` is set: see the class doc)

    def on_response_end(self, trailers: Headers | None) -> None:
        if not self.done:  # `_finish(self.status, "")`, inlined: every response ends here
            self.done = True
            if self.status != 101:
                self.stream = None
            ep = self.ep
            ep.active -= 1
            limits = self.cluster.limits
            limits.requests -= 1
            if self.retry:
                limits.retries -= 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            hook = self.cluster.on_outcome
            if hook is not None:
                hook(ep, self.status, "", _now() - self.start)
        self.sink.on_response_end(trailers)

    def on_read_end(self) -> None:
        self.sink.on_read_end()

    def on_upstream_error(self, error: UpstreamError) -> None:
        if (error.retry_safe and not self.replayed and not self.done and not self.body_sent
                and self.status == 0 and error.flag not in _NO_REPLAY and self._replay(error)):
            return
        self.stream = None
        self._finish(self.status or error.status, error.flag)
        self.sink.on_upstream_error(error)

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        self.status = head.status  # the tunnel stays in flight until it ends
        self.sink.on_upgraded(head, self)

    def pause_request_body(self) -> None:
        self.sink.pause_request_body()

    def resume_request_body(self) -> None:
        self.sink.resume_request_body()

    # -- bookkeeping ----------------------------------------------------------------------

    def _finish(self, status: int, flag: str) -> None:
        """The try is over: release what it counted, report its outcome (once)."""
        if self.done:
            return
        self.done = True
        if self.status != 101:  # a tunnel's ends are independent: it stays until closed
            self.stream = None  # the pool is done with it (and the cycle through its sink ends)
        ep = self.ep
        ep.active -= 1
        limits = self.cluster.limits
        limits.requests -= 1
        if self.retry:
            limits.retries -= 1
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        hook = self.cluster.on_outcome
        if hook is not None:
            hook(ep, status, flag, _now() - self.start)

    def _fail(self, error: UpstreamError) -> None:
        self.timer = None
        if not self.done:
            self._finish(error.status, error.flag)
            self.sink.on_upstream_error(error)

    def _timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        s, self.stream = self.stream, None
        if s is not None:
            s.reset()
        request = self.request
        assert request is not None
        error = upstream_timeout(f"upstream try timed out after {request.per_try_timeout:g}s "
                                 f"({self.ep.key}, cluster {self.cluster.name})")
        self._finish(self.status or error.status, error.flag)
        self.sink.on_upstream_error(error)

    def _replay(self, error: UpstreamError) -> bool:
        """Send the request again after a race of connection reuse; False: not possible."""
        old_stream = self.stream
        if old_stream is None:
            return False
        limits: Limits = self.cluster.limits
        if limits.retries >= limits.max_retries:
            limits.overflow("retries")
            return False
        cluster = self.cluster
        old = self.ep
        request = self.request
        ep = cluster.lb.pick(request.hash_key if request is not None else None, (old,))
        if ep is None:
            return False
        hook = cluster.on_outcome
        if hook is not None:
            hook(old, error.status, error.flag, _now() - self.start)
        old.active -= 1
        ep.active += 1
        self.ep = ep
        self.replayed = True
        if not self.retry:
            self.retry = True
            limits.retries += 1
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        self.stream = None
        end_stream = old_stream.end_stream
        self._open(old_stream.head, end_stream)
        s = self.stream
        if s is not None:
            if self.ended and not end_stream:
                s.send_end(self.trailers)
            if self.paused:
                s.pause_response()
        return True


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
