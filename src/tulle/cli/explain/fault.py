"""The destination's fault injection in a trace: whether the `FaultInjection` filter of the
inbound route acts on the request, and what the client gets when it always does.

The filter stands after authorization and the rate limit (`http/chain.py` ORDER), so only an
admitted request meets it.  Its values are the proxy's own (`FaultFactory`: the abort status,
the shares, the delay), and its header condition is tested by the proxy's own
`header_value`.  A share below 100% is a draw per request: the trace says how often, and the
outcome stays the one most requests get; an abort of every matching request is the answer
(`result: aborted`), and a delay of every matching request that outlasts the time the caller's
proxy (or the destination's) gives the request is a 504 (`result: timed_out`, `timed_out`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tulle.proxyconfig.filters import FaultInjection

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead
    from tulle.dataplane.routing.router import Route


def trace_fault(route: Route, head: RequestHead) -> dict[str, Any] | None:
    """The fault step of the inbound `route` for `head` (None: the route has no fault
    filter): `policy`, `abort` (`status`, for gRPC `grpcStatus`; `percent`), `delay` (`ms`,
    `percent`), `applies` and `why`."""
    cfg = next((f for f in route.rule.filters if isinstance(f, FaultInjection)), None)
    if cfg is None:
        return None
    from tulle.dataplane.filters.fault import FaultFactory, header_value
    from tulle.dataplane.protocols.h2translate import GRPC_STATUS_FOR_HTTP, is_grpc

    f = FaultFactory(cfg)
    doc: dict[str, Any] = {"policy": f.policy if f.policy != "-" else None}
    abort = ""
    if cfg.abort is not None:
        doc["abort"] = {"status": f.http_status, "percent": f.abort_share}
        abort = str(f.http_status)
        if is_grpc(head):  # a trailers-only reply: HTTP 200 with the grpc-status
            code = f.grpc_status or GRPC_STATUS_FOR_HTTP.get(f.http_status, 2)
            doc["abort"].update(status=200, grpcStatus=code)
            abort = f"grpc-status {code}"
    if cfg.delay is not None:
        doc["delay"] = {"ms": cfg.delay.fixed_delay_ms, "percent": f.delay_share}
    for name, value in f.headers:
        if header_value(head.headers, name) != value:
            doc.update(applies=False, why=f"the request's {name.decode('latin-1')} is not the "
                                          "value the fault asks for: it goes on untouched")
            return doc
    parts: list[str] = []
    if f.abort_share:
        parts.append(f"answers {abort} (flag FI) to {f.abort_share:g}% of the requests")
    if cfg.delay is not None and f.delay_share:
        both = ", drawn on its own: one drawn for both is delayed, then aborted"
        parts.append(f"delays {f.delay_share:g}% by {cfg.delay.fixed_delay_ms} ms (flag DI)"
                     + (both if f.abort_share else ""))
    doc.update(applies=True, why="the request matches the fault: the destination's proxy "
                                 + ("; ".join(parts) or "injects nothing (0%)"))
    return doc


def aborts(fault: dict[str, Any] | None) -> bool:
    """Every request like this one is aborted."""
    return bool(fault and fault["applies"] and fault.get("abort")
                and fault["abort"]["percent"] >= 100)


def always_delayed_ms(fault: dict[str, Any] | None) -> int:
    """The delay every request like this one waits (0: not every one, or none)."""
    if not fault or not fault["applies"] or aborts(fault):
        return 0
    delay = fault.get("delay")
    if not delay or delay["percent"] < 100:
        return 0
    return int(delay["ms"])
