"""The HTTP filter contract: what a filter is, what its hooks may answer, how it is built.

Why a contract: every L7 feature still to come (header edits, redirects, faults, rate limits,
authorization) is a step between routing and the upstream.  Written once against this contract
it works for HTTP/1 and HTTP/2 alike: the request stream (`stream.py`) runs the chain
(`chain.py`) the same way whichever driver feeds it.

Shape (Envoy's `StreamFilter`, linkerd's layers):

* A `FilterFactory` is built once per route per snapshot from the filter's typed config
  (`proxyconfig/filters/<name>.py`); everything that can be computed ahead (lower-cased names,
  compiled patterns) is computed there.  `create()` gives the per-request `HttpFilter`; a
  factory that says `stateless` is asked once per snapshot and its instance is shared, so it
  costs no allocation.  Only the hooks a filter class overrides are ever called.
* Hooks, in the order a request meets them: `on_request_head`, `on_request_data`,
  `on_response_head`, `on_response_data`, `on_done`.  Each returns one of:
  - `CONTINUE`: the next filter (then the router / the client) sees the message;
  - `STOP` (head hooks): nothing goes further until the filter calls `stream.resume()` (a
    delay, an external call).  On the request side the body that arrives meanwhile is held
    (the client is paused above the listener's high-water mark); on the response side the
    upstream is paused and what it already sent is held, at most `Chain.buffer_limit` bytes,
    beyond which the request is answered 500.  The route timeout keeps running while a
    filter holds the request;
  - `BUFFER` (data hooks only): hold this chunk with the ones before it and call the hook again
    with the next; the chain holds at most `Chain.buffer_limit` bytes, beyond which the request
    is answered 413 (request side) or 500 (response side) locally.  When a route has response
    data hooks, the response head waits for the first bytes they let through, so that 500 can
    still be sent instead of a response cut short.  The end of a body is a call with
    `end=True` (and often no bytes).
* A filter may answer locally at any hook with `stream.reply(status, body, headers)` and
  return `STOP`; the driver renders the reply for its protocol (HTTP/1, HTTP/2, gRPC trailers-only).  Once
  the response head has gone out a reply can only reset the request.
* A hook that raises is the filter's bug, not the client's: the request is answered 500 (or
  reset if its response already began), the error is counted per listener and filter
  (`tulle_proxy_filter_errors_total`), and the connection and listener keep serving.
* `on_done` is for observers (access log, stats, tracing): it runs once per request however it
  ended and has nothing to return.

Every hook above runs on both protocols (tests/unit/dataplane/http/test_stream.py scripts each
one; tests/integration/dataplane/test_http_filters.py runs them through real proxies).
Not yet: data hooks observe, hold and refuse a body but cannot rewrite it (a hook returns a
verdict, not bytes), and trailers pass no hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead, ResponseHead
    from tulle.dataplane.http.chain import ErrorCounter
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState

ReplyHeaders = tuple[tuple[bytes, bytes], ...]
"""Fields of a local reply besides its framing: lower-case names, validated values."""

CONTINUE = 0
STOP = 1
BUFFER = 2


class RequestRecord(Protocol):
    """What an observer reads of a request in `on_done` (`stream.RequestStream` is it): the
    record access logs, traces and stats are written from."""

    start: float
    """When the request head was parsed, on `stream.request_clock` (the monotonic clock)."""
    status: int
    """The status the client got (0: none, the request was reset)."""
    flags: str
    """Response flags (Envoy's: UF, UO, UT, NR, DC, ...); empty for a plain exchange."""
    cluster: str
    """The cluster the request was routed to ("-" when it was not)."""
    @property
    def upstream_host(self) -> str:
        """`address:port` of the endpoint that took the request ("" when none did)."""
    bytes_in: int
    """Request body bytes received."""
    bytes_out: int
    """Response body bytes sent."""
    authz: str
    """The authorization decision, `<result>:<policy>` (`filters/authz.py`); "" when none ran."""
    @property
    def trace_id(self) -> str:
        """The trace id (32 hex digits) when the listener traces (ADR 0055); else ""."""
    @property
    def span_id(self) -> str:
        """This proxy's span id (16 hex digits) when the listener traces; else ""."""


class FilterStream(Protocol):
    """What a filter sees of the request it runs on (`chain.ChainRun` implements it)."""

    head: RequestHead

    @property
    def facts(self) -> ConnectionFacts:
        """The connection the request came on: peer, TLS/ALPN/SNI, identity, destination."""

    @property
    def record(self) -> RequestRecord:
        """The request's record so far; complete in `on_done`."""

    @property
    def counters(self) -> ErrorCounter:
        """The listener's counters (filter errors, authorization decisions)."""

    def reply(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        """Answer the request locally; the hook that calls this should return STOP.
        `headers`: fields of the reply besides its framing (a redirect's `location`)."""

    def resume(self) -> None:
        """Go on after a hook returned STOP (call it once, from any later loop turn)."""

    @property
    def bodiless(self) -> bool:
        """The request has no body at all (its data hooks are never called)."""

    def cluster(self, name: str) -> ClusterRuntime | None:
        """An upstream cluster of the snapshot this request runs on, for a filter that sends
        requests of its own (a mirror); None when the snapshot has none of that name."""

    def prefer_endpoint(self, cluster: str, endpoint: EndpointState) -> None:
        """Send the request's first try to `endpoint`, a current endpoint of `cluster` (one of
        the route's backends), while it is healthy; retries go where the balancer says
        (session persistence, `filters/session.py`).  From a request-head hook only."""


class HttpFilter:
    """A filter's hooks; the defaults let everything through.  Subclasses override only the
    hooks they need and keep `__slots__`."""

    __slots__ = ()

    def on_request_head(self, stream: FilterStream) -> int:
        return CONTINUE

    def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        return CONTINUE

    def on_response_head(self, stream: FilterStream, head: ResponseHead) -> int:
        return CONTINUE

    def on_response_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        return CONTINUE

    def on_done(self, stream: FilterStream) -> None:
        return None


class FilterFactory(Protocol):
    """Built once per route per snapshot from typed config; makes the per-request filter."""

    name: str
    """The filter's name in the declared order (`chain.ORDER`) and in metrics."""
    filter_type: type[HttpFilter]
    """The class `create` returns: the chain calls only the hooks it overrides."""
    stateless: bool
    """True when one instance can serve every request (no per-request state): the chain then
    creates it once per snapshot and a request allocates nothing for it."""

    def create(self) -> HttpFilter: ...
