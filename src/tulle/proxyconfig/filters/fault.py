"""Fault injection config: the `FaultInjection` HTTP filter (issue 10 item 8, ADR 0041).

For chaos experiments: a share of the matching requests is delayed, and/or a share is answered
by the proxy with an error instead of reaching the application.  Envoy's `fault` filter and
Kuma's `MeshFaultInjection` are the model.

* `delay`: `fixed_delay_ms` before the request goes on, for `percent` of the requests (flag `DI`
  on the record).  The route's timeout keeps running while the request waits.
* `abort`: answer `http_status` (or, for a gRPC request, `grpc_status` in a trailers-only
  response; a plain HTTP request then gets `http_status`, 503 when unset) for `percent` of the
  requests (flag `FI`).  Each share is drawn on its own (Envoy's model): a request drawn for
  both is delayed, then aborted (flags `DI,FI`).
* `headers`: the filter acts only on requests carrying every one of these headers with exactly
  this value (names case-insensitive); empty: every request of the rule.

Percentages are whole numbers 0-100; the draw uses a generator per filter seeded from
`seed` (0: from the OS), so a test can make it deterministic.
The runtime side is `tulle/dataplane/filters/fault.py`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from tulle.errors import FieldError
from tulle.proxyconfig.filters.headers import HeaderName

Percent = Annotated[int, Meta(ge=0, le=100)]
"""Whole percent (ADR 0037's convention for every resilience kind)."""


class FaultDelay(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    fixed_delay_ms: Annotated[int, Meta(ge=1, le=3_600_000)]
    """How long a delayed request waits before it goes on."""
    percent: Percent = 100
    """Share of the matching requests that are delayed."""


class FaultAbort(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    http_status: Annotated[int, Meta(ge=200, le=599)] | None = None
    """Status of the local reply to an HTTP request (and to gRPC when `grpc_status` is unset)."""
    grpc_status: Annotated[int, Meta(ge=1, le=16)] | None = None
    """grpc-status of the trailers-only reply to a gRPC request (1-16: 0 is OK, not a fault)."""
    percent: Percent = 100
    """Share of the matching requests that are aborted."""


class FaultHeader(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: HeaderName
    value: Annotated[str, Meta(max_length=4096)]
    """Exact value (a header sent several times is compared as its values joined by `,`)."""


class FaultInjection(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                     tag_field="type", tag="FaultInjection"):
    """Delay and/or abort a share of the rule's requests."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: Annotated[list[FaultHeader], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    """Only requests with every one of these headers are subject to the faults."""
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    """Seed of the filter's random draws; 0: seeded from the OS."""
    name: Annotated[str, Meta(max_length=253)] = ""
    """The policy the filter stands for (metrics label `policy`); empty: unnamed."""


def errors(f: FaultInjection, path: str) -> list[FieldError]:
    out: list[FieldError] = []
    if f.delay is None and f.abort is None:
        out.append(FieldError(path, "a FaultInjection filter needs `delay`, `abort` or both"))
    if f.abort is not None and f.abort.http_status is None and f.abort.grpc_status is None:
        out.append(FieldError(f"{path}.abort", "needs `http_status`, `grpc_status` or both"))
    seen: set[str] = set()
    for i, h in enumerate(f.headers):
        low = h.name.lower()
        if low in seen:
            out.append(FieldError(f"{path}.headers[{i}].name", f"{h.name!r} appears twice"))
        seen.add(low)
    return out
