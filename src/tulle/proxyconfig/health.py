"""Endpoint health in the contract: outlier detection and active health checks of a cluster.

Kept apart from `model.py` (which only names them on `Cluster`) because both are self-contained
shapes with their own checks, the way filter configs live in `proxyconfig/filters/`.  The
defaults are Envoy's where the issue does not set them (ADR 0040): consecutive failures 5,
interval 10 s, base ejection time 30 s, max ejection 10%.  The proxy's side is
`tulle.dataplane.upstream.health`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from tulle.errors import FieldError

Count = Annotated[int, Meta(ge=0, le=1_000_000)]
Millis = Annotated[int, Meta(ge=0, le=86_400_000)]
PositiveMillis = Annotated[int, Meta(ge=1, le=86_400_000)]


class SuccessRate(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Success-rate ejection: once an interval, an endpoint whose success rate is below the
    mean of the cluster's by more than `stdev_factor / 1000` standard deviations is ejected."""

    minimum_hosts: Annotated[int, Meta(ge=1, le=1_000_000)] = 5
    """Endpoints with enough requests in the interval needed before any is judged."""
    request_volume: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    """Requests an endpoint must have had in the interval to be judged (and counted)."""
    stdev_factor: Annotated[int, Meta(ge=1, le=100_000)] = 1900
    """Thousandths of a standard deviation below the mean that ejects (1900: 1.9 sd)."""


class OutlierDetection(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Passive health: ejects endpoints by what the cluster's own requests see.

    Every try's outcome counts (`upstream/attempt.py` reports them).  An ejected endpoint is
    skipped by the balancer until its ejection time is over; the time is
    `base_ejection_time_ms` times the number of times it was ejected (capped at
    `max_ejection_time_ms`), the count shrinking again by one for each interval it stays in."""

    consecutive_5xx: Count = 5
    """Consecutive responses 500-599 (and local-origin failures: the proxy answers them 5xx)
    that eject; 0: off."""
    consecutive_gateway_errors: Count = 5
    """Consecutive 502, 503, 504 or timeouts that eject; 0: off."""
    consecutive_local_origin_failures: Count = 5
    """Consecutive failures that never produced a response (connect refused or timed out,
    reset, protocol error) that eject; 0: off."""
    success_rate: SuccessRate | None = None
    """Success-rate ejection; None: off."""
    interval_ms: PositiveMillis = 10_000
    """How often ejections end and success rates are judged."""
    base_ejection_time_ms: PositiveMillis = 30_000
    max_ejection_time_ms: PositiveMillis = 300_000
    max_ejection_percent: Annotated[int, Meta(ge=0, le=100)] = 10
    """Share of the cluster's endpoints that may be ejected at once; one may always be (as in
    Envoy) unless this is 0."""


class HealthCheck(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Active health: the proxy probes each endpoint of the cluster on its own."""

    type: Literal["http", "grpc", "tcp"]
    """`http`: a GET of `path` on the cluster's protocol (and TLS) answers one of
    `expected_statuses`; `grpc`: `grpc.health.v1.Health/Check` of `grpc_service` answers
    SERVING (the cluster must be `http2`); `tcp`: a connection opens."""
    path: Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^/[!-~]*$")] = "/"
    authority: Annotated[str, Meta(max_length=253, pattern=r"^[!-~]*$")] = ""
    """Host / :authority of the probe; empty: the endpoint's `address:port`."""
    expected_statuses: Annotated[list[Annotated[int, Meta(ge=100, le=599)]],
                                 Meta(max_length=64)] = msgspec.field(default_factory=list)
    """HTTP statuses that count as healthy; empty: 200-299."""
    grpc_service: Annotated[str, Meta(max_length=253)] = ""
    """The `service` of the gRPC health request; empty: the server as a whole."""
    interval_ms: PositiveMillis = 5_000
    timeout_ms: PositiveMillis = 1_000
    """A probe not answered this long fails."""
    jitter_ms: Millis = 500
    """Each wait between probes is `interval_ms` plus a random 0..`jitter_ms`."""
    unhealthy_threshold: Annotated[int, Meta(ge=1, le=1000)] = 3
    """Consecutive failed probes that mark an endpoint unhealthy."""
    healthy_threshold: Annotated[int, Meta(ge=1, le=1000)] = 2
    """Consecutive passed probes that mark an unhealthy endpoint healthy again."""


def errors(od: OutlierDetection | None, hc: HealthCheck | None, protocol: str,
           path: str) -> list[FieldError]:
    """What types cannot express (`path`: the cluster's, e.g. `clusters[2]`)."""
    out = []
    if od is not None and protocol == "tcp":
        # The TCP relay reports no outcomes yet: refused, never ignored.
        out.append(FieldError(f"{path}.outlier_detection", "not enforced on a tcp cluster (the "
                              "TCP relay reports no outcomes yet)"))
    if od is not None and od.max_ejection_time_ms < od.base_ejection_time_ms:
        out.append(FieldError(f"{path}.outlier_detection.max_ejection_time_ms",
                              "must not be less than base_ejection_time_ms"))
    if hc is not None:
        if hc.timeout_ms > hc.interval_ms:
            out.append(FieldError(f"{path}.health_check.timeout_ms",
                                  "must not exceed interval_ms"))
        if hc.type == "grpc" and protocol != "http2":
            out.append(FieldError(f"{path}.health_check.type",
                                  "grpc needs an http2 cluster"))
        if hc.type in ("http", "grpc") and protocol == "tcp":
            out.append(FieldError(f"{path}.health_check.type",
                                  f"{hc.type} checks need an HTTP cluster, not tcp"))
    return out
