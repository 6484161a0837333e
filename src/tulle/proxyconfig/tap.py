"""Live tap on the proxy stream: what a tap asks for and what a proxy answers (ADR 0056).

Why here, next to the contract: both ends speak it (the control plane sends `TapStart` /
`TapStop`, the proxy sends `TapEvents`) and the data plane must not import the control plane.
Why on the stream and not a new door in the proxy: the stream already crosses hosts over TLS
(ADR 0034) and is admitted for the workloads the proxy fronts (ADR 0028); the admin listener
stays on loopback.

The proxy filters by `TapMatch` *before* it builds a record (a request nobody taps costs one
attribute test), spends a token bucket per tap, keeps at most `MAX_TAPS` taps, drops a tap
at its `expires_ms` deadline unless the control plane renews it, and never sends the values of
`REDACTED_HEADERS`.  Every bound below is enforced by the proxy whatever the control plane asks.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

MAX_TAPS = 8
"""Taps one proxy runs at once; a `TapStart` beyond it is answered `TapEvents(ended=...)`."""
MAX_RATE = 100.0
"""Records per second one tap may send at most (its token bucket's refill, clamped)."""
MIN_RATE = 0.1
MAX_EXPIRES_MS = 120_000
"""The longest a tap runs without being renewed (a `TapStart` with the same id)."""
MAX_RECORDS_PER_BATCH = 100
"""Records in one `TapEvents`; a proxy sends a batch about every `FLUSH_MS`."""
FLUSH_MS = 100
MAX_HEADERS = 64
"""Request headers one record carries at most (with `TapStart.headers`)."""
MAX_HEADER_VALUE = 256
"""Bytes of a header value kept in a record; longer ones end in `...`."""
MAX_FIELD = 1024
"""Bytes of a path or authority kept in a record."""
MAX_ID = 64
REDACTED = "<redacted>"
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                              "x-tulle-token"})
"""Header names whose values no record ever carries: credentials."""


GrpcStatus = Annotated[str, msgspec.Meta(pattern="^(|[0-9]|1[0-6])$")]
"""A gRPC status code as text, or empty: a record with anything else is refused whole."""


class TapMatch(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which requests a tap sees; every field set must match (empty / 0: any)."""

    workload: str = ""
    """`namespace/name` of the local workload (the one whose sidecar sees the request)."""
    service: str = ""
    """`namespace/name` of the Service the request goes to: outbound, the destination
    cluster's Service; inbound, the local workload's own Service."""
    direction: Literal["", "inbound", "outbound"] = ""
    method: str = ""
    """Exact, upper case (`GET`)."""
    path_prefix: str = ""
    authority: str = ""
    """Exact `:authority` / Host (without a default port)."""
    status_min: int = 0
    status_max: int = 0
    """The response status within [status_min, status_max] (0 means no bound); a request
    with no response at all has status 0."""


class TapRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One request a tap saw, as its proxy recorded it when the request was done."""

    ts_ms: int
    """Unix milliseconds the request started."""
    direction: str
    workload: str
    """`namespace/name` of the reporting proxy's local workload."""
    service: str = ""
    method: str
    authority: str = ""
    path: str
    scheme: str = ""
    protocol: str = ""
    """`HTTP/1.1`, `HTTP/2`, ..."""
    status: int = 0
    flags: str = ""
    """Response flags (`UH`, `UF`, `DC`, ...); empty when none."""
    grpc_status: GrpcStatus = ""
    """A gRPC call's status as its caller saw it (`0`..`16`, the golden metrics'
    `grpc_response_status`: `telemetry/grpc_status.call_status`); empty for anything else.  A
    gRPC call fails with HTTP status 200 (ADR 0119)."""
    latency_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    source: str = ""
    """Inbound: the caller's verified SPIFFE ID, else its address.  Outbound: the local
    workload's identity as it is known to the proxy (`namespace/name`)."""
    destination: str = ""
    """Inbound: the local workload; outbound: the upstream endpoint (`host:port`) when the
    proxy kept it, else the Service."""
    mtls: bool = False
    """The downstream connection (inbound) was mesh mTLS with a verified peer identity."""
    cluster: str = ""
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """Request headers, only when the tap asked; `REDACTED_HEADERS` carry `REDACTED`."""


__all__ = ["FLUSH_MS", "MAX_EXPIRES_MS", "MAX_FIELD", "MAX_HEADERS", "MAX_HEADER_VALUE", "MAX_ID",
           "MAX_RATE", "MAX_RECORDS_PER_BATCH", "MAX_TAPS", "MIN_RATE", "REDACTED",
           "REDACTED_HEADERS", "TapMatch", "TapRecord"]
