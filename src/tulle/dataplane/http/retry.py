"""Retries: the router's tries of one request, between the request stream and the cluster.

Why a layer of its own (DESIGN.md section 4: "router (terminal: attempts, retries, budgets)"):
a retry must decide on what a try got -- a status, a reset, a connect failure -- *before* any
of it reaches the client, replay the request body, wait out a backoff and ask the cluster for
another endpoint, and none of that is the stream's or a pool's business.  A `Retrier` stands
between them: to the request stream it is the `UpstreamStream`; to each try it is the
`ResponseSink`.  Until a try's response is accepted nothing passes to the client; from then on
everything does, and the try reports straight to the stream (`sink` rebound: no per-event
hop for the body).

Decisions, per try (ADR 0039):

* *Retry on* (`RetryPolicy.retry_on`, Envoy's names): a status (`5xx`, `gateway-error`,
  listed codes, a trailers-only gRPC status) or an error, by its response flag: `UF` connect
  failure, `UC` reset (an `unprocessed` `UC` is a refused stream), `UT` per-try timeout, `UPE`.
  `UO` (a cluster limit) is never retried: the limit is the answer.
* *May retry*: retries left; the cluster's `max_retries` (retries in flight) not reached;
  the request body seen so far is within `max_body_bytes` (it is
  buffered while it is sent, never held back for it); the method is idempotent unless the
  policy allows others -- or the upstream cannot have acted on it (connect failure, refused
  stream), or the answer is a gRPC status the policy lists (every gRPC call is a POST: the
  listed statuses are the user's word that the call may be repeated, as in Envoy and Istio);
  the cluster's budget (`upstream/budget.py`) has room.  A retry past the budget is
  not made: the failed try's answer goes to the client, counted in
  `tulle_proxy_upstream_retry_budget_exhausted_total`.
* *Backoff*: full jitter, uniform in [0, min(cap, base x 2^(n-1))] before retry n (25 ms base,
  250 ms cap by default); the request's whole timeout keeps running through it.
* *Another endpoint*: every endpoint a try failed on is avoided while the cluster has others.
* *Exhausted*: the last try's answer goes to the client with flag `URX` added.
* *The retried try*: a response is dropped (`Attempt.drop`: counted out with its status, its
  connection kept when it ended whole, ADR 0059); a failed try is reset.
* *Refused by a limit after the backoff* (the cluster's `max_requests` or `max_retries` filled
  while the retry waited): the client gets the failure that was being retried -- its status
  and flag, with `UO` added (`UF,UO`; a retried status answers as a local reply of that
  status, `UO`: its body is gone) -- not a bare 503 `UO` that would hide what failed (ADR 0048).

A bodiless request (a GET) has no `Retrier` until its first try fails: the stream opens that
try itself and hands it over (`adopt`) only then, so a healthy GET on a retrying route pays the
budget's deposit and one attribute test.  A request with a body has one from the start: its
body must be kept while it is sent.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from tulle.dataplane.exchange import IDEMPOTENT, UpstreamError
from tulle.dataplane.upstream.attempt import Attempt, AttemptRequest
from tulle.dataplane.upstream.lb import EndpointState

if TYPE_CHECKING:
    import asyncio

    from tulle.dataplane.exchange import (
        Headers,
        RequestHead,
        ResponseHead,
        TunnelStream,
        UpstreamStream,
    )
    from tulle.dataplane.http.stream import RequestStream
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.proxyconfig.retry import RetryPolicy

# IDEMPOTENT (RFC 9110 9.2.2; others are retried only when the policy allows them) is the
# exchange's: the HTTP/1 pool's replay of an unanswered request reads it too.

_GATEWAY = frozenset({502, 503, 504})


def _overloaded(head: ResponseHead) -> bool:
    """A peer's limit or overload answer (`exchange.OVERLOADED`, or Envoy's): never retried,
    the limit is the answer (ADR 0039, 0100)."""
    return any(name == b"x-envoy-overloaded" for name, _ in head.headers)


class RetryRuntime:
    """A route's `RetryPolicy`, compiled once per route per snapshot into sets and flags."""

    __slots__ = ("any_5xx", "any_method", "base", "cap", "error_flags", "grpc", "max_body",
                 "num_retries", "per_try_timeout", "safe_flags", "statuses")

    def __init__(self, cfg: RetryPolicy, per_try_timeout: float = 0.0) -> None:
        on = set(cfg.retry_on)
        self.num_retries = cfg.num_retries
        self.any_5xx = "5xx" in on
        statuses = set(cfg.status_codes) if "retriable-status-codes" in on else set()
        if "gateway-error" in on:
            statuses |= _GATEWAY
        self.statuses = frozenset(statuses)
        """Statuses retried (besides any 5xx with `5xx`)."""
        self.grpc = (frozenset(b"%d" % s for s in cfg.grpc_statuses)
                     if "retriable-grpc-statuses" in on else frozenset())
        flags: set[str] = set()
        if "5xx" in on:
            flags |= {"UF", "UC", "UT", "UPE", "UR"}
        if "gateway-error" in on:
            flags |= {"UF", "UT"}
        if "reset" in on:
            flags |= {"UC", "UR"}
        if "connect-failure" in on:
            flags.add("UF")
        self.error_flags = frozenset(flags)
        self.safe_flags = frozenset({"UF", "UC"} if "refused-stream" in on else set())
        """Flags retried when the error is retry-safe (a refused stream is a safe `UC`)."""
        self.base = cfg.backoff_base_ms / 1000
        self.cap = cfg.backoff_max_ms / 1000
        self.any_method = cfg.retry_non_idempotent
        self.max_body = cfg.max_body_bytes
        self.per_try_timeout = per_try_timeout

    def status_retried(self, head: ResponseHead, end: bool) -> str | None:
        """Why `head` is retried (`"503"`, `"grpc-14"`: the retry metric's reason); None: it
        is not."""
        status = head.status
        if status in self.statuses or (self.any_5xx and status >= 500):
            return None if _overloaded(head) else str(status)
        if self.grpc and end:  # a trailers-only gRPC answer: its status is in the head
            for name, value in head.headers:
                if name == b"grpc-status":
                    if value not in self.grpc or _overloaded(head):
                        return None
                    return "grpc-" + value.decode("ascii", "replace")
        return None

    def method_allows(self, method: bytes, idempotent_only: bool) -> bool:
        """Whether a try of a `method` request may be repeated: always when the upstream cannot
        have acted on it or the reason is a listed gRPC status (`idempotent_only` False),
        else only for an idempotent method or with `retry_non_idempotent`.  `Retrier._retry`
        and `tulle explain` decide with this one rule."""
        return not idempotent_only or self.any_method or method in IDEMPOTENT

    def error_retried(self, error: UpstreamError) -> bool:
        flag = error.flag
        if flag in self.error_flags:
            return True
        return error.unprocessed and flag in self.safe_flags

    def backoff(self, n: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry `n` (1-based): full jitter under an exponential cap."""
        ceiling = min(self.cap, self.base * (1 << min(n - 1, 30)))
        return (rng or random).random() * ceiling


def _endpoint(up: UpstreamStream) -> EndpointState | None:
    return up.pool.endpoint if isinstance(up, Attempt) else None


class Retrier:
    """One request's tries (see the module docstring): the stream's upstream, the tries'
    sink."""

    __slots__ = ("avoid", "bodiless", "chunks", "cluster", "committed", "cur", "ended",
                 "exhausted", "failed", "head", "last_key", "paused", "policy", "replayable", "retries",
                 "size", "stream", "timer", "trailers")

    def __init__(self, policy: RetryRuntime, cluster: ClusterRuntime, head: RequestHead,
                 stream: RequestStream, bodiless: bool) -> None:
        self.policy = policy
        self.cluster = cluster
        self.head = head
        self.stream = stream
        self.bodiless = bodiless
        self.cur: UpstreamStream | None = None
        """The try in progress; None during a backoff (or once reset)."""
        self.retries = 0
        self.avoid: list[EndpointState] = []
        self.chunks: list[bytes] = []
        """The request body so far, for replay (while `replayable`)."""
        self.size = 0
        self.replayable = True
        self.ended = bodiless
        self.trailers: Headers | None = None
        self.paused = False
        self.committed = False
        """A response was accepted: everything passes to the stream from now on."""
        self.timer: asyncio.TimerHandle | None = None
        self.last_key = ""
        self.exhausted = False
        """The last failure was retriable but the retries were used up (flag `URX`)."""
        self.failed: UpstreamError | None = None
        """The failure the scheduled retry retries: what the client gets if a limit refuses
        that retry after its backoff."""

    def open(self, request: AttemptRequest | None) -> UpstreamStream | None:
        """The first try; None when the cluster has no endpoint (as `open_stream`)."""
        self.cluster.limits.budget.deposit()
        up = self.cluster.open_stream(self.head, self, self.bodiless, request)
        if up is None:
            return None
        if self.retries == 0 and not self.committed and self.cur is None and up is not None:
            self.cur = up  # (unless the pool failed it synchronously and that was handled)
        return self

    @classmethod
    def adopt(cls, policy: RetryRuntime, stream: RequestStream) -> Retrier:
        """Take over a bodiless request whose first try the stream opened itself (its first
        failure is the first moment a retry layer is needed: a healthy GET never pays for
        one).  The failed try is `stream.upstream`; the budget was counted at dispatch."""
        d = stream.decision
        assert d.cluster is not None
        self = cls(policy, d.cluster, stream.head, stream, True)
        self.cur = stream.upstream
        stream.upstream = self
        if stream.run is not None or stream.alog is not None:
            stream.tried = self
        return self

    # -- UpstreamStream (the request stream calls these) ------------------------------------

    @property
    def endpoint_key(self) -> str:
        cur = self.cur
        return cur.endpoint_key if cur is not None else self.last_key

    def send_data(self, data: bytes) -> None:
        cur = self.cur
        if self.replayable:
            self.chunks.append(data)
            self.size += len(data)
            if self.size > self.policy.max_body:
                self.replayable = False
                if cur is not None:
                    self.chunks = []
                else:  # in a backoff: the held body is the only copy; stop the client
                    self.stream.pause_request_body()
        elif cur is None:
            self.chunks.append(data)
        if cur is not None:
            cur.send_data(data)

    def send_end(self, trailers: Headers | None = None) -> None:
        self.ended = True
        self.trailers = trailers
        cur = self.cur
        if cur is not None:
            cur.send_end(trailers)

    def reset(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        cur, self.cur = self.cur, None
        self.chunks = []
        if cur is not None:
            cur.reset()

    def pause_response(self) -> None:
        self.paused = True
        if self.cur is not None:
            self.cur.pause_response()

    def resume_response(self) -> None:
        self.paused = False
        if self.cur is not None:
            self.cur.resume_response()

    # -- ResponseSink (the try reports here until a response is accepted) -------------------

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        stream = self.stream
        if not self.committed:
            status = head.status
            policy = self.policy
            if ((status >= 500 or policy.grpc or status in policy.statuses)
                    and (reason := policy.status_retried(head, end_stream)) is not None):
                failed = UpstreamError(status if status >= 400 else 503, "",
                                       f"upstream answered {reason}")
                if self._retry(reason, not reason.startswith("grpc-"), failed):
                    return
                if self.exhausted:
                    stream.flags = f"{stream.flags},URX" if stream.flags else "URX"
            # accepted (`_commit`, inline: this runs once per request)
            self.committed = True
            self.replayable = False
            self.chunks = []
            cur = self.cur
            if isinstance(cur, Attempt):
                cur.sink = stream
        stream.on_response_head(head, end_stream)

    def on_upstream_error(self, error: UpstreamError) -> None:
        if not self.committed and self.policy.error_retried(error):
            if self._retry(error.flag, not error.unprocessed, error):
                return
            if self.exhausted:
                error = UpstreamError(error.status, error.flag + ",URX", error.detail,
                                      error.retry_safe)
        elif error.flag == "UO" and self.failed is not None:  # a limit refused the retry
            f = self.failed
            error = UpstreamError(f.status, f"{f.flag},UO" if f.flag else "UO",
                                  f"{f.detail}; its retry refused: {error.detail}")
        self.cur = None
        self.stream.on_upstream_error(error)

    def on_informational(self, head: ResponseHead) -> None:
        self.stream.on_informational(head)

    def on_response_data(self, data: bytes) -> None:
        self.stream.on_response_data(data)

    def on_response_end(self, trailers: Headers | None) -> None:
        self.stream.on_response_end(trailers)

    def on_read_end(self) -> None:
        self.stream.on_read_end()

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        self._commit()
        self.stream.on_upgraded(head, stream)

    def pause_request_body(self) -> None:
        self.stream.pause_request_body()

    def resume_request_body(self) -> None:
        self.stream.resume_request_body()

    # -- the decisions ------------------------------------------------------------------------

    def _commit(self) -> None:
        """Accept the current try's response: no more retries; the try reports straight to
        the stream from now on."""
        self.committed = True
        self.replayable = False
        self.chunks = []
        cur = self.cur
        if isinstance(cur, Attempt):
            cur.sink = self.stream

    def _retry(self, reason: str, idempotent_only: bool, failed: UpstreamError) -> bool:
        """Retry the request if the policy, its body and the budget allow: drop the failed
        try (`failed` says what it got), wait out the backoff, then try again.  False: the
        failure stands."""
        policy = self.policy
        cluster = self.cluster
        if self.retries >= policy.num_retries:
            if policy.num_retries:
                cluster.m_retries_exhausted.labels(cluster.name).value += 1
                self.exhausted = True
            return False
        if not self.replayable:
            return False
        if not policy.method_allows(self.head.method, idempotent_only):
            return False
        limits = cluster.limits
        if limits.retries >= limits.max_retries:  # the bulkhead: the failure stands (Envoy)
            limits.overflow("retries")
            return False
        if not limits.budget.withdraw():
            cluster.m_budget_exhausted.labels(cluster.name).value += 1
            return False
        cur, self.cur = self.cur, None
        if cur is not None:
            ep = _endpoint(cur)
            if ep is not None and ep not in self.avoid:
                self.avoid.append(ep)
            self.last_key = cur.endpoint_key
            if isinstance(cur, Attempt) and cur.status and not cur.try_done:
                cur.drop()  # a response: its connection is kept when it ends whole
            else:
                cur.reset()  # (a try that failed is over already)
        self.retries += 1
        self.failed = failed
        cluster.m_retries.labels(cluster.name, reason).value += 1
        self.timer = cluster.loop.call_later(policy.backoff(self.retries), self._next)
        return True

    def _next(self) -> None:
        """The backoff is over: the next try, on an endpoint no earlier try failed on."""
        self.timer = None
        request = AttemptRequest(avoid=tuple(self.avoid),
                                 per_try_timeout=self.policy.per_try_timeout, retry=True)
        up = self.cluster.open_stream(self.head, self, self.bodiless, request)
        if up is None:
            self.stream.on_upstream_error(UpstreamError(
                503, "UH", f"no healthy endpoint in cluster '{self.cluster.name}'"))
            return
        self.cur = up
        if self.paused:
            up.pause_response()
        chunks = self.chunks
        if not self.replayable:  # more than the bound came during the backoff: last replay
            self.chunks = []
            self.stream.resume_request_body()
        for chunk in chunks:
            if self.cur is not up:
                return  # the try failed synchronously and was handled
            up.send_data(chunk)
        if self.ended and not self.bodiless and self.cur is up:
            up.send_end(self.trailers)
