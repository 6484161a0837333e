"""The `FaultInjection` filter: delay and/or abort a share of a rule's requests.

Config: `proxyconfig/filters/fault.py`.  Position: after authz and the rate limit (`chain.ORDER`:
a fault stands in for the upstream, so only admitted requests meet it).  An abort answers
locally (flag `FI`); for a gRPC request with `grpc_status` set the reply is trailers-only with
that `grpc-status`.  A delay holds the request (STOP) and resumes it on a loop timer (flag
`DI`); the route's timeout keeps running meanwhile, as Envoy's does.  The delay and the abort
are drawn independently (Envoy's model): a request drawn for both is delayed, then aborted
(flags `DI,FI`).  Each injected fault is
counted in `tulle_proxy_faults_injected_total{listener,policy,fault}`.

The draws use one `random.Random` per factory (seeded from `seed`, else from the OS), built
once per snapshot; a request not matching `headers` draws nothing.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from tulle.dataplane.http.filter import CONTINUE, STOP, FilterStream, HttpFilter

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead
    from tulle.proxyconfig.filters.fault import FaultInjection

ABORT_BODY = b"fault filter abort\n"


def is_grpc(head: RequestHead) -> bool:
    """A gRPC request (its local replies are trailers-only with a grpc-status).  Here, not
    `h2translate.is_grpc`: an HTTP/1-only proxy must not load the HTTP/2 modules."""
    for n, v in head.headers:
        if n == b"content-type":
            return v[:16] == b"application/grpc"
    return False


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The values of `name` (lower-case) joined by `,`; None when absent."""
    values = [v for n, v in headers if n == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b",".join(values)


class _FaultFilter(HttpFilter):
    __slots__ = ("factory", "timer")

    def __init__(self, factory: FaultFactory) -> None:
        self.factory = factory
        self.timer: asyncio.TimerHandle | None = None

    def on_request_head(self, stream: FilterStream) -> int:
        f = self.factory
        head = stream.head
        for name, value in f.headers:
            if header_value(head.headers, name) != value:
                return CONTINUE
        # Two independent draws, the delay's first, as Envoy's fault filter (and so Istio and
        # Kuma) does: each share is its own percent of the matching requests, and a request
        # drawn for both is delayed, then aborted (ADR 0106).
        rng = f.rng
        delayed = f.delay_share > 0.0 and rng.random() * 100.0 < f.delay_share
        aborted = f.abort_share > 0.0 and rng.random() * 100.0 < f.abort_share
        if delayed:
            stream.record.flags = "DI"
            stream.counters.fault_injected(f.policy, "delay")
            loop = asyncio.get_running_loop()
            self.timer = (loop.call_later(f.delay_s, self._abort_after_delay, stream) if aborted
                          else loop.call_later(f.delay_s, stream.resume))
            return STOP
        if aborted:
            self._abort(stream, "FI")
            return STOP
        return CONTINUE

    def _abort(self, stream: FilterStream, flags: str) -> None:
        f = self.factory
        stream.record.flags = flags
        stream.counters.fault_injected(f.policy, "abort")
        if f.grpc_status and is_grpc(stream.head):
            stream.reply(f.http_status, ABORT_BODY, ((b"grpc-status", b"%d" % f.grpc_status),))
        else:
            stream.reply(f.http_status, ABORT_BODY)

    def _abort_after_delay(self, stream: FilterStream) -> None:
        self.timer = None
        self._abort(stream, "DI,FI")

    def on_done(self, stream: FilterStream) -> None:
        if self.timer is not None:
            self.timer.cancel()  # the request ended while delayed: nothing left to resume
            self.timer = None


class FaultFactory:
    """Built once per route per snapshot.  Without a delay the filter keeps no per-request
    state (no timer to cancel): one instance serves every request."""

    __slots__ = ("_shared", "abort_share", "delay_s", "delay_share", "grpc_status", "headers",
                 "http_status", "policy", "rng", "stateless")

    name = "fault"
    filter_type: type[HttpFilter] = _FaultFilter

    def __init__(self, cfg: FaultInjection) -> None:
        self.rng = random.Random(cfg.seed or None)
        self.headers = tuple((h.name.lower().encode(), h.value.encode()) for h in cfg.headers)
        self.policy = cfg.name or "-"
        abort = cfg.abort
        self.abort_share = float(abort.percent) if abort is not None else 0.0
        self.http_status = (abort.http_status or 503) if abort is not None else 503
        self.grpc_status = (abort.grpc_status or 0) if abort is not None else 0
        delay = cfg.delay
        self.delay_share = float(delay.percent) if delay is not None else 0.0
        self.delay_s = delay.fixed_delay_ms / 1000.0 if delay is not None else 0.0
        self.stateless = delay is None
        self._shared = _FaultFilter(self)

    def create(self) -> HttpFilter:
        return self._shared if self.stateless else _FaultFilter(self)
