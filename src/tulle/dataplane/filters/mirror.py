"""RequestMirror at run time: copy a share of requests to another cluster, fire-and-forget.

Runs last in the chain (`http/chain.py` ORDER), so the copy is the request exactly as the
upstream will receive it, with its authority's host suffixed `-shadow`.  The copy is a request
of its own on the mirror cluster (limits, balancer, attempt layer), reporting to a `_Sink`
that discards its response; nothing of it reaches the client, and the main request never waits
for it.  Bounded, never queued without bound:

* at most `MAX_IN_FLIGHT` copies per route at once: past it a request is not mirrored and is
  counted `dropped`;
* the body is mirrored up to `MAX_BODY` bytes: a request that declares more is not mirrored
  (`dropped`); a body without a declared length that grows past it has its copy reset
  (`dropped`), never cut short;
* a copy has `MIRROR_TIMEOUT` seconds to its response's end (the attempt layer's per-try
  deadline), and a copy whose request ends without its body (the client went away) is reset;
  both count `failed`, like a copy with no endpoint or an upstream error.

Counted in `tulle_proxy_mirror_requests_total{cluster, outcome}`: every copy opened counts
`sent`, and one that then does not end well also `failed` or `dropped`; a request a bound keeps
from being mirrored counts `dropped` only.  Request trailers are not
mirrored; upgrades (WebSocket) are not mirrored.  The share is drawn per request with the
process's random generator.  A route without a mirror pays nothing: the filter and its data
hook exist only on routes that have one.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.filter import CONTINUE, FilterStream, HttpFilter
from tulle.dataplane.upstream.attempt import AttemptRequest

if TYPE_CHECKING:
    from tulle.dataplane.exchange import Headers, ResponseHead, TunnelStream, UpstreamError, UpstreamStream
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.proxyconfig.filters.mirror import RequestMirror

MAX_IN_FLIGHT = 128
"""Copies of one route's requests in flight at once."""
MAX_BODY = 65_536
"""Request body bytes a copy may carry."""
MIRROR_TIMEOUT = 15.0
"""Seconds a copy may take to its response's end."""


def shadow(authority: bytes) -> bytes:
    """`api:80` -> `api-shadow:80`, `api` -> `api-shadow`, `[::1]:80` -> `[::1]-shadow:80`."""
    if authority[:1] == b"[":
        end = authority.find(b"]") + 1
        return authority[:end] + b"-shadow" + authority[end:]
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host + b"-shadow:" + port
    return authority + b"-shadow"


class _Sink:
    """Where a copy's response goes: nowhere.  Counts the copy out once."""

    __slots__ = ("body", "cluster", "ended", "factory", "over", "up")

    def __init__(self, factory: MirrorFactory, cluster: ClusterRuntime) -> None:
        self.factory = factory
        self.cluster = cluster
        self.up: UpstreamStream | None = None
        self.over = False
        self.ended = False
        """The copy's request was sent whole."""
        self.body = 0

    def finish(self, outcome: str) -> None:
        if self.over:
            return
        self.over = True
        self.factory.in_flight -= 1
        if outcome:
            self.cluster.m_mirrors.labels(self.cluster.name, outcome).value += 1

    def abandon(self, outcome: str) -> None:
        up, self.up = self.up, None
        self.finish(outcome)
        if up is not None:
            up.reset()

    # -- ResponseSink --------------------------------------------------------------------

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        if end_stream:
            self.finish("")

    def on_informational(self, head: ResponseHead) -> None:
        pass

    def on_response_data(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: Headers | None) -> None:
        self.finish("")

    def on_read_end(self) -> None:
        pass

    def on_upstream_error(self, error: UpstreamError) -> None:
        self.up = None
        self.finish("failed")

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:  # pragma: no cover
        stream.close()  # (upgrades are not mirrored: a copy never asks for one)
        self.finish("")

    def pause_request_body(self) -> None:
        pass  # the copy's body is bounded by MAX_BODY: the pool may hold that much

    def resume_request_body(self) -> None:
        pass


class _Mirror(HttpFilter):
    """Per request: the copy (if this request is mirrored) its body goes to."""

    __slots__ = ("factory", "sink")

    def __init__(self, factory: MirrorFactory) -> None:
        self.factory = factory
        self.sink: _Sink | None = None

    def on_request_head(self, stream: FilterStream) -> int:
        f = self.factory
        if f.numerator < f.denominator and random.random() * f.denominator >= f.numerator:
            return CONTINUE
        head = stream.head
        if head.upgrade:
            return CONTINUE
        cluster = stream.cluster(f.cluster)
        if cluster is None:
            return CONTINUE  # (validation refuses a mirror to a cluster the snapshot lacks)
        m = cluster.m_mirrors
        if f.in_flight >= MAX_IN_FLIGHT or (head.content_length or 0) > MAX_BODY:
            m.labels(cluster.name, "dropped").value += 1
            return CONTINUE
        bodiless = stream.bodiless
        copy = RequestHead(head.method, head.path, shadow(head.authority), head.scheme,
                           list(head.headers), head.content_length, head.version)
        sink = _Sink(f, cluster)
        f.in_flight += 1
        m.labels(cluster.name, "sent").value += 1
        up = cluster.open_stream(copy, sink, bodiless, f.attempt)
        if up is None:
            sink.finish("failed")
            return CONTINUE
        if not sink.over:
            sink.up = up
            if bodiless:
                sink.ended = True
            else:
                self.sink = sink
        return CONTINUE

    def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        sink = self.sink
        if sink is None:
            return CONTINUE
        up = sink.up
        if up is None or sink.over:
            self.sink = None
            return CONTINUE
        sink.body += len(data)
        if sink.body > MAX_BODY:
            self.sink = None
            sink.abandon("dropped")
            return CONTINUE
        if data:
            up.send_data(data)
        if end:
            self.sink = None
            sink.ended = True
            up.send_end()
        return CONTINUE

    def on_done(self, stream: FilterStream) -> None:
        sink = self.sink
        if sink is not None:  # the request ended before its body did: the copy cannot finish
            self.sink = None
            sink.abandon("failed")


class MirrorFactory:
    """One mirror of one route, built once per snapshot: its share, and its copies in flight
    (per route, so one busy route cannot starve another's mirror)."""

    __slots__ = ("attempt", "cluster", "denominator", "in_flight", "numerator")

    name = "mirror"
    stateless = False
    filter_type: type[HttpFilter] = _Mirror

    def __init__(self, cfg: RequestMirror) -> None:
        self.cluster = cfg.cluster
        self.numerator = cfg.numerator
        self.denominator = cfg.denominator
        self.in_flight = 0
        self.attempt = AttemptRequest(per_try_timeout=MIRROR_TIMEOUT)

    def create(self) -> HttpFilter:
        return _Mirror(self)
