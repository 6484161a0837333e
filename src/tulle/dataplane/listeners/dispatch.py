"""Choosing where a request goes, shared by every downstream driver (HTTP/1, HTTP/2).

`resolve` is the router step of the request path: listener context + request head → the
cluster to open a stream on, or the local response to give instead (400 a path that cannot be
normalised, 404 no route, 503 no cluster, 500 a backend that did not resolve; 403 on a
connection the listener no longer admits, `not_admitted`).  It normalises
the path first (`routing/paths.py`) and leaves the normalised path in the head, so the upstream
receives what was routed.
`add_forwarding_headers` is the one place that sets x-forwarded-for, x-forwarded-proto and
x-request-id.  The route's filters (`http/chain.py`, in their declared order) run after both, on
the same `RequestHead`: the decision carries the route's chain, None when it has no filters.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Final

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.routing.paths import PathRejected
from tulle.dataplane.telemetry.clip import FIELD, cut

if TYPE_CHECKING:
    from tulle.dataplane.http.chain import Chain
    from tulle.dataplane.http.retry import RetryRuntime
    from tulle.dataplane.http.stream import RequestStream
    from tulle.dataplane.listeners.listener_context import ListenerContext
    from tulle.dataplane.listeners.request_stats import RequestStats
    from tulle.dataplane.routing.router import Router
    from tulle.dataplane.upstream.attempt import AttemptRequest
    from tulle.dataplane.upstream.cluster import ClusterRuntime


class Decision:
    """Where a request goes: a cluster, or a local response (status, body, response flag).

    A decision that names a cluster depends only on the route and the snapshot, so the
    listener context builds it once (`ListenerContext.decision`) and every request that takes
    that route shares it: treat it as immutable."""

    __slots__ = ("attempt", "body", "chain", "cluster", "cluster_name", "flag", "retry",
                 "stats", "status", "stream_idle", "timeout", "timeout_ms")

    def __init__(self, cluster: ClusterRuntime | None, cluster_name: str, timeout_ms: int,
                 status: int = 0, body: bytes = b"", flag: str = "",
                 stats: RequestStats | None = None, chain: Chain | None = None,
                 attempt: AttemptRequest | None = None,
                 retry: RetryRuntime | None = None, stream_idle: float = 0.0) -> None:
        self.cluster = cluster
        self.cluster_name = cluster_name
        self.timeout_ms = timeout_ms
        self.timeout = timeout_ms / 1000
        """`timeout_ms` in seconds (divided once per decision, not per request)."""
        self.status = status
        self.body = body
        self.flag = flag
        self.stats = stats
        """The request metrics of this listener and cluster (None for local responses)."""
        self.chain = chain
        """The route's filters to run before the upstream is opened; None: no filters."""
        self.attempt = attempt
        """What each try asks of the cluster (a per-try deadline); None: nothing."""
        self.retry = retry
        """The route's retries (`http/retry.py`); None: one try."""
        self.stream_idle = stream_idle
        """Seconds the request may go without body bytes either way; 0: no limit."""


def resolve(ctx: ListenerContext, router: Router | None, default_cluster: str,
            head: RequestHead, stream: RequestStream | None = None) -> Decision:
    """The request's decision: the route its head matches (told to `stream` as its `route`,
    which the access log names) and what that route asks of the cluster."""
    paths = ctx.paths
    if paths is not None and paths.suspect(head.path) is not None:
        # From here on (routing, filters, the upstream) the request carries the normalised path.
        try:
            head.path = paths.normalize(head.path)
        except PathRejected as exc:
            ctx.protocol_error("invalid_path")
            return Decision(None, "-", 0, 400, exc.detail.encode() + b"\n", "DPE")
    if router is None:
        return _shared(ctx, default_cluster, ctx.settings.request_timeout_ms)
    route = router.only or router.route(head)
    if stream is not None:  # the access log's `route_name`: a store into the compiled
        # stream (a store into the interpreted context cost a generic attribute write)
        stream.route = route
    if route is None:
        # The client's host and path, at most 256 bytes of each (ADR 0103): echoed whole, a
        # client pipelining 60 KB requests had the proxy hold 60 KB per unread answer.
        return Decision(None, "-", 0, 404, b"no route for host '%b' path '%b' on listener "
                        b"%b\n" % (cut(head.authority, FIELD),
                                   cut(head.path.split(b"?", 1)[0], FIELD),
                                   ctx.name.encode()), "NR")
    route.requests.value += 1
    cluster = route.pick_cluster()
    if route.special:  # filters (the rule's, a backend's) or a per-try deadline
        chains = route.backend_chains
        chain = chains.get(cluster, route.chain) if chains is not None else route.chain
        return ctx.decision(cluster, route.timeout_ms, chain, route.attempt, route.retry,
                            route.stream_idle, route, route.addressed)
    return _shared(ctx, cluster, route.timeout_ms)


def _shared(ctx: ListenerContext, cluster: str, timeout_ms: int) -> Decision:
    """`ctx.decision(cluster, timeout_ms)` for a route without filters, its lookup done here:
    the context is interpreted code, and a call into it costs a Python frame per request.
    The first request of a cluster and timeout builds the decision there."""
    by_timeout = ctx.decisions.get(cluster)
    if by_timeout is not None:
        d = by_timeout.get(timeout_ms)
        if d is not None:
            return d
    return ctx.decision(cluster, timeout_ms)


def no_cluster(name: str) -> Decision:
    """The answer when a route names a cluster the snapshot does not have."""
    return Decision(None, name or "-", 0, 503, b"no cluster named '%b'\n" % name.encode(), "NC")


def unresolved(name: str) -> Decision:
    """The answer for a cluster that stands for a backend the control plane could not resolve
    (`Cluster.unresolved`): 500, Gateway API's answer for that share of a rule's traffic."""
    return Decision(None, name, 0, 500, b"backend '%b' not resolved\n" % name.encode(), "UB")


def not_admitted(listener: str, reason: str) -> bytes:
    """The body of the 403 a request gets on a connection the listener's admission refuses
    since a swap (its source, its destination: `listeners/admission.py`, ADR 0127)."""
    return b"connection no longer admitted on listener %b: %b\n" % (listener.encode(),
                                                                     reason.encode())


class _RequestIds:
    """Version-4-shaped UUIDs: 80 random bits per process, then a 48-bit counter.

    uuid.uuid4() reads os.urandom (a system call) per request; a request id needs uniqueness,
    not unpredictability.  The random prefix (re-drawn in each worker process) keeps ids from
    different proxies apart; the counter keeps one proxy's ids apart.
    """

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._n = 0
        self._prefix = b""
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # workers must not repeat ids

    def reseed(self) -> None:
        h = b"%020x" % random.SystemRandom().getrandbits(80)
        # xxxxxxxx-xxxx-4xxx-Vxxx-<counter>, V in 8..b (the RFC 4122 variant)
        variant = b"89ab"[int(h[15:16], 16) & 3:][:1]
        self._prefix = (h[:8] + b"-" + h[8:12] + b"-4" + h[12:15] + b"-" + variant + h[16:19]
                        + b"-")
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return b"%b%012x" % (self._prefix, self._n & 0xFFFFFFFFFFFF)


request_id: Final = _RequestIds().next


def _index_of(headers: Headers, name: bytes) -> int:
    """Position of the last field called `name` (present)."""
    return max(i for i, (n, _) in enumerate(headers) if n == name)


_CLIENT_CERT_FIELDS: Final = frozenset({b"x-forwarded-client-cert", b"client-cert",
                                        b"client-cert-chain"})
"""What a client may not hand the application as its certificate (ADR 0096)."""


def add_forwarding_headers(head: RequestHead, peer_ip: bytes, generate_request_id: bool,
                           client_cert: bytes = b"") -> None:
    """Append the client to x-forwarded-for; set x-forwarded-proto and x-request-id if absent.

    The client's certificate is the proxy's to tell (ADR 0096; Envoy's SANITIZE_SET, RFC 9440
    section 3): `x-forwarded-client-cert`, `client-cert` and `client-cert-chain` as the
    client sent them are removed, and with a verified peer (mesh mTLS) `client_cert`
    (`ConnectionFacts.client_cert`: `URI=<its SPIFFE ID>`, made once per connection) is set
    as `x-forwarded-client-cert`.  A forged one reached the
    application byte for byte, from a plaintext client as from a mesh peer."""
    headers = head.headers
    xff = -1
    has_proto = has_id = forged = False
    for n, _ in headers:
        first = n[:1]  # (a one-byte slice is a cached object: nothing is allocated)
        if first == b"x":
            if n == b"x-forwarded-for":
                if xff < 0:
                    xff = _index_of(headers, b"x-forwarded-for")
            elif n == b"x-forwarded-proto":
                has_proto = True
            elif n == b"x-request-id":
                has_id = True
            elif n == b"x-forwarded-client-cert":
                forged = True
        elif first == b"c" and n in _CLIENT_CERT_FIELDS:
            forged = True
    if forged:
        headers[:] = [(n, v) for n, v in headers if n not in _CLIENT_CERT_FIELDS]
        if xff >= 0:
            xff = _index_of(headers, b"x-forwarded-for")
    if client_cert:
        headers.append((b"x-forwarded-client-cert", client_cert))
    if peer_ip:
        if xff >= 0:
            headers[xff] = (b"x-forwarded-for", headers[xff][1] + b", " + peer_ip)
        else:
            headers.append((b"x-forwarded-for", peer_ip))
    if not has_proto:
        headers.append((b"x-forwarded-proto", head.scheme))
    if not has_id and generate_request_id:
        headers.append((b"x-request-id", request_id()))
