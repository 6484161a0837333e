"""The request stream: one object per request, the same for HTTP/1 and HTTP/2.

Why: everything a request goes through after its head is parsed (routing decision, filters,
deadline, the upstream exchange, the record that logs and metrics read) is protocol-neutral.
Written here once, every L7 feature works on both protocols; the drivers keep only framing,
flow control and the connection's life (DESIGN.md section 4, Envoy's active stream).

Shape:

* The driver makes one `RequestStream` per request, as an instance of its own subclass
  (`H1Exchange`, `H2Exchange`), which is the stream's *port* to the client: it renders what the
  stream sends (`send_head` / `send_data` / `end_response`, a local reply, a reset) for its
  protocol and does the connection's part of pausing and resuming.  One object per request:
  the port costs no allocation of its own (ADR 0015).  `http/port.py` declares the port
  (`StreamPort`) and what the stream needs of its connection (`StreamConn`).
* The driver feeds the stream the request: `dispatch()` once the head is parsed (the stream
  routes it by the connection's routing key), then `request_data` / `request_end`.  The
  stream runs the route's filters (`http/chain.py`) and opens the upstream when they let it;
  body that arrives before the upstream exists is held in a bounded buffer (above the
  listener's high-water mark the port stops reading the client: an HTTP/1 connection pauses,
  an HTTP/2 stream withholds its window) and sent once it opens.
* The upstream reports to the stream (it is the `ResponseSink`); the response passes the
  response filters (a head may be stopped and resumed, data buffered up to the chain's bound)
  on its way to the port.
* One deadline for both protocols: the route timeout is armed when the request is routed, so
  it covers the whole request, including time a filter holds it stopped.  Long timeouts ride
  on the connection's deadline sweeper (the stream's `due`, ADR 0010), short ones on a
  timer; either way `on_timeout` answers 504 (or resets a response already begun).
* The stream is also the request's record for logs and traces (start, status, response flags,
  bytes in and out, cluster); `record()` counts it exactly once, runs the observers' `on_done`
  once, however the request ended.  Body bytes are counted on every request (one addition
  per chunk): the golden metrics (`telemetry/golden.py`) read them on every route.

A route with no filters has no `ChainRun`: every filter check is one attribute test.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final, cast

from mypy_extensions import mypyc_attr

from tulle.dataplane.exchange import OVERLOADED
from tulle.dataplane.http.chain import Chain, ChainRun, HeaderListEdit
from tulle.dataplane.http.held import HeldResponse
from tulle.dataplane.http.idle import StreamIdle
from tulle.dataplane.http.port import RoutedOwner, StreamConn, StreamPort
from tulle.dataplane.http.retry import Retrier, RetryRuntime
from tulle.dataplane.listeners.dispatch import (
    Decision,
    add_forwarding_headers,
    not_admitted,
    resolve,
)
from tulle.dataplane.upstream.attempt import AttemptRequest
from tulle.dataplane.upstream.budget import FLUSH_EVERY

log: Final = logging.getLogger("tulle.proxy")

request_clock: Final = time.monotonic
"""The clock of a request's times: `start` (the drivers read it when the head arrives),
`up_start`, `first_byte` and the end `record` reads, hence every duration of the access log,
the request metrics, the golden duration histogram and tap.  The monotonic clock itself,
not the loop's: uvloop's `loop.time()` has millisecond steps, which made a sub-millisecond
request last 0 or 1 ms in all of them (and a method call through the loop cost more)."""


def client_gone(flags: str) -> str:
    """A request's flags once its client left before the end: DC after any flag already set,
    as Envoy lists several (a client gone during an injected delay is `DI,DC`; a bare `DI`
    with no answer said nothing of why none was sent)."""
    if not flags:
        return "DC"
    return flags if "DC" in flags.split(",") else flags + ",DC"


if TYPE_CHECKING:
    import asyncio

    from tulle.dataplane.exchange import (
        Headers,
        RequestHead,
        ResponseHead,
        UpstreamError,
        UpstreamStream,
    )
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.http.filter import ReplyHeaders
    from tulle.dataplane.listeners.request_stats import RequestStats
    from tulle.dataplane.routing.router import Route
    from tulle.dataplane.telemetry.access_log import AccessLogger
    from tulle.dataplane.telemetry.tracing.tracer import RequestTrace
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState


@mypyc_attr(allow_interpreted_subclasses=True)  # HTTP/2 and tests subclass it (ADR 0052)
class RequestStream(StreamPort):
    """One request: head, decision, filters, deadline, upstream, and its record."""

    __slots__ = ("alog", "authz", "bodiless", "body", "body_size", "bytes_in", "bytes_out",
                 "cluster", "conn", "decision", "done", "due", "edits", "expect_continue",
                 "first_byte", "flags", "grpc_status", "head", "head_sent", "idle",
                 "request_done", "resp", "retry", "route", "run", "start", "stats", "status",
                 "timer", "trace", "trailers", "tried", "up_start", "upstream")

    def __init__(self, conn: StreamConn, head: RequestHead, bodiless: bool,
                 start: float, expect_continue: bool = False) -> None:
        self.conn = conn
        self.head = head
        self.bodiless = bodiless
        """The request has no body at all: the upstream exchange is opened already ended."""
        self.request_done = bodiless
        self.start = start
        self.status = 0
        self.flags = ""
        self.authz = ""
        """The authorization decision (`<result>:<policy>`), when an authz filter ran."""
        self.cluster = "-"
        self.stats: RequestStats | None = None
        self.bytes_in = 0
        """Request body bytes (the golden metrics' `istio_request_bytes`, the observers)."""
        self.bytes_out = 0
        """Response body bytes sent to the client, counted likewise."""
        self.grpc_status = ""
        """The `grpc-status` the client got: the upstream's (its trailers, or a trailers-only
        head), or the one of the proxy's own trailers-only reply (`H2Exchange.send_local`)."""
        self.decision: Decision
        """Set by `route` (a request refused before routing has none)."""
        self.run: ChainRun | None = None
        self.edits: tuple[HeaderListEdit, ...] = ()
        """The response-head edits of a route whose filters are only header edits
        (`Chain.edits_only`): applied here, with no `ChainRun`."""
        """The route's filters on this request; None when the route has none."""
        self.upstream: UpstreamStream | None = None
        self.tried: UpstreamStream | None = None
        """The exchange the upstream took, kept for the record on routes with filters (its
        readers, the observers, are filters); `upstream_host` reads it when asked."""
        self.head_sent = False
        self.done = False
        """Recorded: counted, observers told; nothing more happens to this request."""
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0
        """Loop time of the route timeout when the connection's sweeper watches it."""
        self.expect_continue = expect_continue
        self.body: list[bytes] | None = None
        """Request body held until the upstream opens (bounded by the port's flow control)."""
        self.body_size: int
        """Bytes in `body` (set with it)."""
        self.trailers: Headers | None
        """Request trailers that arrived before the upstream opened (set by `request_end`)."""
        self.resp: HeldResponse | None = None
        self.retry: RetryRuntime | None = None
        """The route's retries while a bodiless request's first try has not answered (its
        failure hands the try to a `Retrier`, `http/retry.py`); None otherwise."""
        self.idle: StreamIdle | None = None
        """The stream idle timeout's watch (`http/idle.py`), on routes that have one."""
        self.trace: RequestTrace | None = None
        """The request's trace context, on listeners that trace (`telemetry/tracing`)."""
        self.alog: AccessLogger | None = None
        """The access log of the listener's snapshot (`telemetry/access_log.py`), when it has
        one: then the stream also keeps the timings and the route below for its record."""
        self.first_byte = 0.0
        """Loop time the response head arrived from upstream (access log only)."""
        self.up_start = 0.0
        """Loop time the upstream exchange was opened (access log only)."""
        self.route: Route | None = None
        """The route the request matched (access log only)."""

    @property
    def facts(self) -> ConnectionFacts:
        """The connection the request came on (`FilterStream.facts`)."""
        return self.conn.facts

    # -- driver -> stream: the request -----------------------------------------------------

    def refuse_unadmitted(self, reason: str) -> None:
        """Answer the request 403 (`NA`) without routing it: the listener's admission refuses
        its connection since a swap (`reason`, ADR 0127).  Also what a driver answers a
        request it has not dispatched yet on a connection refused earlier (ADR 0129): under
        the listener's context in force, whose access log records it."""
        ctx = self.conn.handle.ctx
        self.alog = ctx.access_log
        self.flags = "NA"
        self.send_local(403, not_admitted(ctx.name, reason))

    def dispatch(self, resumed: bool = False) -> None:
        """Route the head by the connection's routing key (`listeners/dispatch.py`), arm the
        deadline, run the filters, open the upstream.  `resumed`: the filters let a stopped
        head go on; only open.  One method, not one per step: this runs once per request."""
        head = self.head
        if resumed:
            d = self.decision
        else:
            conn = self.conn
            guard = conn.guard
            if guard.rejecting:
                self.alog = conn.ctx.access_log
                guard.count("reject_request")
                self.flags = "OL"
                self.overloaded()
                return
            ctx = conn.ctx
            if conn.handle.ctx is not ctx:
                refused = cast(RoutedOwner, conn).follow_snapshot()
                ctx = conn.ctx
                if refused:  # the new admission refuses the connection (ADR 0127)
                    self.refuse_unadmitted(refused)
                    return
            self.alog = ctx.access_log
            # Before routing, as Envoy does: a route may match on x-forwarded-for or
            # x-request-id as the upstream will see them.
            facts = conn.facts
            add_forwarding_headers(head, facts.peer_ip, ctx.generate_request_id,
                                   facts.client_cert)
            tracer = ctx.tracer
            if tracer is not None:  # the proxy's context on the head before routing, too
                self.trace = tracer.start(head)
            self.decision = d = resolve(ctx, conn.router, conn.cluster or "", head, self)
            self.cluster = d.cluster_name
            self.stats = d.stats
            if d.cluster is None and d.chain is None:
                self.flags = d.flag
                self.send_local(d.status, d.body)
                return
            timeout = d.timeout
            if timeout and not head.upgrade:
                if timeout >= ctx.sweep_timeout_min:
                    # The connection's sweeper watches it (ADR 0010): its deadline is the
                    # earliest of its requests'.
                    self.due = due = conn.loop.time() + timeout
                    if conn.deadline_kind != "request" or due < conn.deadline:
                        conn.deadline = due
                        conn.deadline_kind = "request"
                else:
                    self.timer = conn.loop.call_later(timeout, self.on_timeout)
            if d.stream_idle:
                self.idle = StreamIdle(self, d.stream_idle, conn.loop)
            chain = d.chain
            if chain is not None:
                if chain.edits_only:
                    headers = head.headers
                    try:
                        for edit in chain.request_edits:
                            edit(headers)
                    except Exception as exc:
                        self._edit_failed(chain, exc)
                        return
                    self.edits = chain.response_edits
                else:
                    self.run = run = ChainRun(chain, head, self, ctx)
                    if not run.request_head():
                        return  # answered, or stopped: filters_continue() comes back here
                    d = self.decision  # a filter may have pinned the request (`prefer_endpoint`)
        cluster = d.cluster
        if cluster is None:  # the filters let it through to a backend that cannot take it
            self.flags = d.flag
            self.send_local(d.status, d.body)
            return
        retry = d.retry
        if retry is None:
            up = cluster.open_stream(head, self, self.bodiless, d.attempt)
        elif self.bodiless:  # a Retrier only if this try fails (`Retrier.adopt`)
            budget = cluster.limits.budget
            budget.pending += 1  # (`Budget.deposit`, inlined: this runs per request)
            if budget.pending >= FLUSH_EVERY:
                budget.flush()
            self.retry = retry
            up = cluster.open_stream(head, self, True, d.attempt)
        else:
            up = Retrier(retry, cluster, head, self, False).open(d.attempt)
        if up is None:
            self.flags = "UH"
            self.reply_local(503, b"no healthy endpoint in cluster '%b'\n"
                             % d.cluster_name.encode())
            return
        if self.head_sent:
            return  # the pool failed the exchange synchronously and it was answered already
        if self.upstream is not None:
            return  # ... or a Retrier took that failure over (`Retrier.adopt`) and retries
        self.upstream = up
        if self.run is not None or self.trace is not None:
            self.tried = up
        if self.alog is not None:
            self.tried = up
            self.up_start = request_clock()
        if self.conn.write_paused:
            up.pause_response()  # the client is not reading: neither does this upstream
        if self.expect_continue and not self.request_done:
            self.send_continue()
        body = self.body
        if body is not None:
            self.body = None
            self.bytes_in += self.body_size
            hooks = self.run if self.run is not None and self.run.chain.request_datas else None
            for chunk in body:
                out = hooks.request_data(chunk, False) if hooks is not None else chunk
                if out is None:
                    if self.upstream is None:
                        self.resume_request()  # answered: the client must not stay paused
                        return
                    continue
                up.send_data(out)
            self.resume_request()
        if self.request_done and not self.bodiless:
            self._end_upstream(self.trailers)

    def request_data(self, data: bytes) -> None:
        """Request body from the client."""
        idle = self.idle
        if idle is not None:
            idle.moved = True
        up = self.upstream
        if up is not None:
            self.bytes_in += len(data)
            run = self.run
            if run is not None and run.chain.request_datas:
                out = run.request_data(data, False)
                if out is None:
                    return
                data = out
            up.send_data(data)
        elif not self.head_sent and not self.done:
            body = self.body
            if body is None:
                self.body = [data]
                self.body_size = len(data)
            else:
                body.append(data)
                self.body_size += len(data)
            if self.body_size > self.conn.ctx.high_water:
                self.pause_request()

    def request_end(self, trailers: Headers | None) -> None:
        """The client's request is complete."""
        self.request_done = True
        up = self.upstream
        if up is None:
            self.trailers = trailers
        elif self.run is None or not self.run.chain.request_datas:
            up.send_end(trailers)
        else:
            self._end_upstream(trailers)

    def _end_upstream(self, trailers: Headers | None) -> None:
        run = self.run
        if run is not None and run.chain.request_datas:
            rest = run.request_data(b"", True)
            if rest is None:
                return
            up = self.upstream
            if up is None:
                return
            if rest:
                up.send_data(rest)
        up = self.upstream
        if up is not None:
            up.send_end(trailers)

    # -- deadline --------------------------------------------------------------------------

    def on_timeout(self) -> None:
        """The route timeout passed (from the timer, or the connection's sweeper)."""
        self.timer = None
        self.due = 0.0
        self._expire("UT", 504, b"upstream request timeout\n")

    def on_idle(self) -> None:
        """No body bytes either way for the route's stream idle timeout (`http/idle.py`):
        408 while the client's body is awaited, 504 while the upstream's answer is."""
        self.idle = None
        if self.request_done:
            self._expire("SI", 504, b"upstream stream idle timeout\n")
        else:
            self._expire("SI", 408, b"request body idle timeout\n")

    def _expire(self, flag: str, status: int, body: bytes) -> None:
        """A timeout ended the request: drop the upstream, answer (or reset a response
        already begun)."""
        if self.done:
            return
        up, self.upstream = self.upstream, None
        if up is not None:
            up.reset()
        self.flags = flag
        self.resp = None
        if self.head_sent:
            self.status = self.status or status
            self.send_reset()
        else:
            self.send_local(status, body)

    # -- ResponseSink (the upstream reports here) -------------------------------------------

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        if self.done:
            return
        retry = self.retry
        if retry is not None:
            self.retry = None
            status = head.status
            if ((status >= 500 or retry.grpc or status in retry.statuses)
                    and retry.status_retried(head, end_stream)):
                Retrier.adopt(retry, self).on_response_head(head, end_stream)
                return
        self.status = head.status
        if end_stream and head.status == 200 and self.head.version == b"2":
            for n, v in head.headers:  # a trailers-only gRPC response: the status is here
                if n == b"grpc-status":
                    self.grpc_status = v.decode("latin-1")
        if self.alog is not None and not self.first_byte:
            self.first_byte = request_clock()
        run = self.run
        if run is not None:
            chain = run.chain
            if chain.response_heads and not run.response_head(head):
                if run.stopped and not self.done:
                    self._hold_response(head, end_stream)
                return  # stopped, or a filter answered instead (filter_reply)
            if chain.response_datas and not end_stream:
                # The data hooks see the body before the head leaves, so a hook that buffers
                # past the bound can still be answered 500 instead of a response cut short.
                self.resp = HeldResponse(head, False, stopped=False)
                return
        else:
            edits = self.edits
            if edits:
                headers = head.headers
                try:
                    for edit in edits:
                        edit(headers)
                except Exception as exc:
                    self._edit_failed(self.decision.chain, exc)
                    return
        self.head_sent = True
        self.send_head(head, end_stream)
        if end_stream:
            self.complete()

    def on_response_data(self, data: bytes) -> None:
        if self.done:
            return
        idle = self.idle
        if idle is not None:
            idle.moved = True
        run = self.run
        if run is not None:  # (a held response needs filters: `resp` is tested only here)
            if self.resp is not None:
                self._held_data(data)
                return
            if run.chain.response_datas:
                out = run.response_data(data, False)
                if out is None:
                    return
                data = out
        self.bytes_out += len(data)
        self.send_data(data)

    def on_response_end(self, trailers: Headers | None) -> None:
        if self.done:
            return
        if trailers:
            for n, v in trailers:
                if n == b"grpc-status":
                    self.grpc_status = v.decode("latin-1")
        run = self.run
        if run is not None:
            held = self.resp
            if held is not None:
                if held.stopped:
                    held.end = True
                    held.trailers = trailers
                    return
                self._release(b"", True)
                if self.done:
                    return
            elif run.chain.response_datas:
                rest = run.response_data(b"", True)
                if rest is None:
                    return
                if rest:
                    self.bytes_out += len(rest)
                    self.send_data(rest)
        self.end_response(trailers)

    def on_upstream_error(self, error: UpstreamError) -> None:
        if self.done:
            return
        retry = self.retry
        if retry is not None:
            self.retry = None
            if retry.error_retried(error):
                Retrier.adopt(retry, self).on_upstream_error(error)
                return
        self.flags = error.flag
        self.upstream = None
        self.resp = None
        if self.head_sent:
            self.status = self.status or error.status
            self.send_reset()
        else:
            self.send_local(error.status, error.detail.encode() + b"\n",
                            OVERLOADED if error.flag == "UO" else ())

    # -- ChainPort (the filters call back) ---------------------------------------------------

    def filters_continue(self) -> None:
        """The request head passed every filter after a STOP: open the upstream now."""
        if not self.done and self.upstream is None:
            self.dispatch(resumed=True)

    def filter_reply(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        """A filter answers the request (or the chain does: 413/500/filter error)."""
        up, self.upstream = self.upstream, None
        if up is not None:
            up.reset()  # answered on the response side: the upstream's response is dropped
        self.resp = None
        if self.done:
            return
        if self.head_sent:
            self.send_reset()
        elif headers:
            self.send_local(status, body, headers)
        else:
            self.send_local(status, body)

    def _edit_failed(self, chain: Chain | None, exc: Exception) -> None:
        """A header edit of an edits-only chain raised: as a failing hook (`ChainRun`), it
        is counted and logged once per chain, and the request answered 500."""
        self.conn.ctx.filter_error("headers")
        if chain is not None and not chain.logged:
            chain.logged = True
            log.warning("filter headers failed (logged once per route and snapshot; counted "
                        "in tulle_proxy_filter_errors_total)", exc_info=exc)
        self.filter_reply(500, b"filter error\n")

    def upstream_cluster(self, name: str) -> ClusterRuntime | None:
        """A cluster of the snapshot this request runs on (for a mirror)."""
        return self.conn.ctx.clusters.get(name)

    def prefer_endpoint(self, cluster: str, endpoint: EndpointState) -> None:
        """Send this request's first try to `endpoint` of `cluster` (one of its route's
        backends) while it is healthy (session persistence, ADR 0058).  The request gets a
        decision of its own: the route's for that cluster, with a try request that prefers
        the endpoint (its per-try deadline kept; retries go where the balancer says)."""
        d = self.decision
        if cluster != d.cluster_name:
            d = self.conn.ctx.decision(cluster, d.timeout_ms, d.chain, d.attempt, d.retry,
                                       d.stream_idle)
            if d.cluster is None:
                return
        base = d.attempt
        attempt = AttemptRequest(per_try_timeout=base.per_try_timeout if base else 0.0,
                                 prefer=endpoint)
        self.decision = Decision(d.cluster, cluster, d.timeout_ms, stats=d.stats,
                                 chain=d.chain, attempt=attempt, retry=d.retry,
                                 stream_idle=d.stream_idle)
        self.cluster = cluster
        self.stats = d.stats

    def response_continue(self) -> None:
        """The response head passed every filter after a STOP: let it and what waited go."""
        held = self.resp
        if held is None or self.done:
            return
        held.stopped = False
        up = self.upstream
        if up is not None:
            up.resume_response()
        run = self.run
        chunks, end, trailers = held.chunks, held.end, held.trailers
        held.chunks = []
        held.size = 0
        if held.bodiless or run is None or not run.chain.response_datas:
            self.resp = None
            self.head_sent = True
            self.send_head(held.head, held.bodiless)
            if held.bodiless:
                self.complete()
                return
        for chunk in chunks:
            self.on_response_data(chunk)
            if self.done:
                return
        if end:
            self.on_response_end(trailers)

    # -- helpers -----------------------------------------------------------------------------

    def reply_local(self, status: int, body: bytes) -> None:
        """Answer the request ourselves (no route, no endpoint, errors) unless done."""
        if not self.done:
            self.send_local(status, body)

    def _hold_response(self, head: ResponseHead, end: bool) -> None:
        """A response-head hook stopped: hold the head, pause the upstream."""
        self.resp = HeldResponse(head, end, stopped=True)
        up = self.upstream
        if up is not None and not end:
            up.pause_response()

    def _held_data(self, data: bytes) -> None:
        held = self.resp
        assert held is not None
        if held.stopped:
            held.chunks.append(data)
            held.size += len(data)
            run = self.run
            if run is not None and held.size > run.chain.buffer_limit:
                run.reply(500, b"filter buffer limit exceeded\n")
            return
        self._release(data, False)

    def _release(self, data: bytes, end: bool) -> None:
        """Data for a head held for the data hooks: the head leaves with the first bytes they
        let through (or at the end)."""
        run = self.run
        held = self.resp
        assert run is not None and held is not None
        out = run.response_data(data, end)
        if out is None or self.done:
            return
        self.resp = None
        self.head_sent = True
        self.send_head(held.head, False)
        if out:
            self.bytes_out += len(out)
            self.send_data(out)

    # -- the record ----------------------------------------------------------------------------

    def downstream_reset(self) -> None:
        """The client reset the request or went away: drop the upstream, record it (DC,
        `client_gone`)."""
        if self.done:
            return
        self.flags = client_gone(self.flags)
        up, self.upstream = self.upstream, None
        if up is not None:
            up.reset()
        self.resp = None
        self.request_done = True
        self.complete()

    @property
    def trace_id(self) -> str:
        """The request's trace id (32 hex digits; "" when its listener does not trace)."""
        trace = self.trace
        return "" if trace is None else trace.trace_id.decode()

    @property
    def span_id(self) -> str:
        """This proxy's span of the request (16 hex digits; "" when not traced)."""
        trace = self.trace
        return "" if trace is None else trace.span_id.decode()

    @property
    def upstream_host(self) -> str:
        """`address:port` of the endpoint that took the request (routes with filters only;
        empty when no endpoint did)."""
        tried = self.tried
        return "" if tried is None else tried.endpoint_key

    def record(self) -> None:
        """Count this request in the requests metric and tell the observers, exactly once."""
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        idle = self.idle
        if idle is not None:
            self.idle = None
            idle.cancel()
        if self.done:
            return
        self.done = True
        now = request_clock()
        alog = self.alog
        if alog is not None:  # before the observers' done(), which lets `tried` go
            alog.log(self, now)
            if self.run is None:
                self.tried = None
        run = self.run
        if run is not None:
            self.run = None  # breaks stream -> run -> stream: freed without the GC
            if run.chain.observers:
                run.done()
            else:
                run.finished = True  # what done() does when nobody observes: no call
        trace = self.trace
        if trace is not None and trace.sampled:
            trace.tracer.finish(trace, self)
        conn = self.conn
        ctx = conn.ctx
        stats = self.stats or ctx.stats(self.cluster)
        ms = (now - self.start) * 1000.0
        stats.count(self.status, self.flags, ms)
        golden = stats.golden
        if golden is not None:
            golden.count(self, ms)
        tap = ctx.tap
        if tap.taps:  # a live tap runs (ADR 0056): it sees the request done
            tap.see(self)
        if run is not None or trace is not None:
            self.tried = None  # read by the observers; breaks stream <-> exchange
