"""The caller's retry policy in a trace: what the rule retries, and what a retry changes for
this request.

The caller's proxy retries a try that failed in a way the rule's policy lists, at most
`num_retries` times, after a backoff, within the cluster's retry budget, on another endpoint
when there is one (`http/retry.py`).  A retried status needs an idempotent method unless the
policy allows any (`retry_non_idempotent`).  The trace reads the policy through the proxy's
own `RetryRuntime` (`Route.retry`), so a status or a failure is retried in the trace exactly
when it is in traffic.  What it cannot know is the budget's room and whether a later try does
better: an answer every endpoint of the backend gives alike (a fault's abort or delay, a 403)
is the answer after the retries too, with flag `URX` when they were all used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tulle.dataplane.exchange import ResponseHead
from tulle.dataplane.http.retry import IDEMPOTENT

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import Route


def retry_doc(route: Route, method: str) -> dict[str, Any] | None:
    """The rule's retry policy as the proxy runs it; None: the rule does not retry."""
    rt, cfg = route.retry, route.rule.retry
    if rt is None or cfg is None:
        return None
    statuses_ok = rt.any_method or method.encode() in IDEMPOTENT
    return {"attempts": rt.num_retries, "on": list(cfg.retry_on),
            "statusCodes": sorted(rt.statuses), "any5xx": rt.any_5xx,
            "grpcStatuses": list(cfg.grpc_statuses),
            "backoffMs": [cfg.backoff_base_ms, cfg.backoff_max_ms],
            "perTryMs": round(rt.per_try_timeout * 1000),
            "statusesRetriedForThisMethod": statuses_ok,
            "why": (f"up to {rt.num_retries} retries, within the cluster's retry budget"
                    + ("" if statuses_ok else
                       f"; a {method} is retried only when the upstream cannot have acted on "
                       "it (connect failure, refused stream): its statuses are not"))}


def retried(route: Route, method: str, status: int | None, flag: str) -> str | None:
    """Why the caller's proxy retries a try that ends with `status` (None: no response) or
    error `flag`, as its `RetryRuntime` decides; None when it does not."""
    rt = route.retry
    if rt is None:
        return None
    if status is not None:
        if rt.status_retried(ResponseHead(status, []), True) is None:
            return None
        if not rt.any_method and method.encode() not in IDEMPOTENT:
            return None
        return f"the caller's proxy retries a {status}"
    if flag in rt.error_flags:
        return f"the caller's proxy retries a try that fails with {flag}"
    return None


def annotate(hops: list[dict[str, Any]], route: Route, method: str) -> None:
    """An endpoint whose answer is the same on every try (a fault's abort or delay past the
    timeout, an authorization refusal) and which the rule's policy retries: the answer
    stands after the retries, which it says (`retried`)."""
    if route.retry is None:
        return
    n = route.retry.num_retries
    for h in hops:
        for ep in h.get("endpoints") or []:
            result = ep.get("result")
            if result not in ("aborted", "timed_out", "denied"):
                continue
            why = (retried(route, method, None, "UT") if result == "timed_out"
                   else retried(route, method, ep.get("status"), ""))
            if why is not None:
                ep["retried"] = (f"{why}: every endpoint answers alike, so the client gets "
                                 f"this after {n} retries (flag URX), later by their "
                                 "backoffs")
