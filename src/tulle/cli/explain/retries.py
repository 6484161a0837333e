"""The caller's retry policy in a trace: what the rule retries, and what a retry changes for
this request.

The caller's proxy retries a try that failed in a way the rule's policy lists, at most
`num_retries` times, after a backoff, within the cluster's retry budget, on another endpoint
when there is one (it avoids those that failed; `http/retry.py`).  A retried HTTP status needs
an idempotent method unless the policy allows any; a listed gRPC status and a failure the
upstream cannot have acted on (a connect failure) do not.  The trace asks the proxy's own
`RetryRuntime` each of these questions (`status_retried`, `error_retried`, `method_allows`),
with the answer the destination gives: an HTTP status, a gRPC status in a trailers-only 200,
or the error flag of a try that failed (UT for a per-try timeout, UF for a handshake the
caller refused).

What it says of the outcome: an answer that every endpoint of the backend gives alike is the
answer after the retries too, with flag URX when they are all used -- or, for per-try
timeouts, the caller's request timeout ends the request first when the tries do not fit in
it.  When the endpoints answer differently, or some are not traced, a retry goes to another
endpoint and may do better.  What it cannot know: the budget's room, and a request body
larger than `max_body_bytes` (never retried: the trace has no body).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tulle.dataplane.exchange import ResponseHead, UpstreamError

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import Route


def retry_doc(route: Route, method: str) -> dict[str, Any] | None:
    """The rule's retry policy as the proxy runs it; None: the rule does not retry."""
    rt, cfg = route.retry, route.rule.retry
    if rt is None or cfg is None:
        return None
    statuses_ok = rt.method_allows(method.encode(), True)
    grpc = (f"; listed gRPC statuses ({', '.join(map(str, cfg.grpc_statuses))}) are retried "
            "for any method" if rt.grpc else "")
    return {"attempts": rt.num_retries, "on": list(cfg.retry_on),
            "statusCodes": sorted(rt.statuses), "any5xx": rt.any_5xx,
            "grpcStatuses": list(cfg.grpc_statuses),
            "backoffMs": [cfg.backoff_base_ms, cfg.backoff_max_ms],
            "perTryMs": round(rt.per_try_timeout * 1000),
            "maxReplayBytes": cfg.max_body_bytes,
            "statusesRetriedForThisMethod": statuses_ok,
            "why": (f"up to {rt.num_retries} retries, within the cluster's retry budget, of a "
                    f"request whose body is at most {cfg.max_body_bytes} bytes"
                    + ("" if statuses_ok else
                       f"; a {method}'s HTTP statuses are not retried (only failures the "
                       "upstream cannot have acted on)") + grpc)}


def status_retried(route: Route, method: str, status: int, grpc_status: int | None
                   ) -> str | None:
    """Why the caller's proxy retries a try answered `status` (a gRPC call's `grpc_status`
    comes in a trailers-only 200), as its `Retrier` decides; None when it does not."""
    rt = route.retry
    if rt is None:
        return None
    fields = [(b"grpc-status", b"%d" % grpc_status)] if grpc_status is not None else []
    reason = rt.status_retried(ResponseHead(status, fields), True)
    if reason is None or not rt.method_allows(method.encode(), not reason.startswith("grpc-")):
        return None
    return f"the caller's proxy retries a {reason}"


def error_retried(route: Route, method: str, error: UpstreamError) -> str | None:
    """Why the caller's proxy retries a try that failed with `error`; None when it does
    not."""
    rt = route.retry
    if rt is None or not rt.error_retried(error):
        return None
    if not rt.method_allows(method.encode(), not error.unprocessed):
        return None
    return f"the caller's proxy retries a try that fails with {error.flag}"


_PER_TRY = UpstreamError(504, "UT", "per-try timeout")
_REFUSED = UpstreamError(503, "UF", "TLS handshake refused", retry_safe=True)


def annotate(hops: list[dict[str, Any]], route: Route, method: str, grpc: bool) -> None:
    """Say, on each endpoint whose answer the rule's policy retries, what the retries change
    (`retried`).  `grpc`: the request is a gRPC call (its errors come as trailers-only 200s)."""
    rt = route.retry
    if rt is None:
        return
    for h in hops:
        eps = h.get("endpoints") or []
        alike = (not h.get("endpointsNotShown")
                 and len({(ep.get("result"), ep.get("status"), ep.get("grpcStatus"))
                          for ep in eps}) == 1)
        for ep in eps:
            why = _why(ep, route, method, grpc)
            if why is None:
                continue
            if not alike:
                ep["retried"] = (f"{why}: a retry goes to another endpoint of the backend "
                                 "(it avoids those that failed), which may answer otherwise")
            elif ep["result"] == "timed_out" and ep.get("timeout") == "per-try":
                ep["retried"] = f"{why}: {_per_try_tries(route)}"
            else:
                ep["retried"] = (f"{why}: every endpoint answers alike, so the client gets "
                                 f"this after {rt.num_retries} retries (flag URX), later by "
                                 "their backoffs")


def _why(ep: dict[str, Any], route: Route, method: str, grpc: bool) -> str | None:
    result = ep.get("result")
    if result == "timed_out":
        timeout = ep.get("timeout")
        if timeout == "per-try":
            return error_retried(route, method, _PER_TRY)
        if timeout == "destination":  # the destination's proxy answers a 504 response
            if grpc:  # as a trailers-only 200 with the status that stands for a 504
                from tulle.dataplane.protocols.h2translate import GRPC_STATUS_FOR_HTTP

                return status_retried(route, method, 200, GRPC_STATUS_FOR_HTTP.get(504, 2))
            return status_retried(route, method, 504, None)
        return None  # the caller's own request timeout ends the request: nothing retries
    if result == "refused_by_client":
        return error_retried(route, method, _REFUSED)
    if result in ("aborted", "denied") and ep.get("status") is not None:
        return status_retried(route, method, ep["status"], ep.get("grpcStatus"))
    return None


def _per_try_tries(route: Route) -> str:
    """What a per-try timeout on every try comes to: the retries used up, or the caller's
    request timeout first."""
    rt = route.retry
    assert rt is not None
    per_try = rt.per_try_timeout * 1000
    tries = rt.num_retries + 1
    request = route.timeout_ms
    if request and tries * per_try >= request:
        return (f"its request timeout ({request} ms) ends the request within "
                f"{int(request // per_try) + 1} tries, before the retries are used up (504 UT, "
                "no URX)")
    return (f"every try times out alike, so the client gets a 504 after {rt.num_retries} "
            "retries (flag URX), later by their backoffs")
