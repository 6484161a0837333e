"""Retry contract: a route rule's retry policy and a cluster's retry budget.

Why two structs in two places: *whether and how* to retry is a property of the request's route
(Gateway API puts `retry` on the rule; a Service or mesh policy fills rules that have none),
while *how much retrying the upstream can bear* is a property of the upstream service, shared
by every route that sends to it -- the budget (Linkerd's model: retries at most `percent` of
requests plus a floor per second over a window) lives on the cluster so that no set of routes
can multiply an outage between them.  ADR 0039.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

RetryOn = Literal["5xx", "gateway-error", "reset", "connect-failure", "refused-stream",
                  "retriable-status-codes", "retriable-grpc-statuses"]
"""Conditions a try is retried on (Envoy's `retry_on` names):

* `5xx`: a 5xx response, or no response at all (reset, connect failure, per-try timeout);
* `gateway-error`: a 502, 503 or 504 response, a per-try timeout or a connect failure;
* `reset`: the connection was reset or closed before a response head came;
* `connect-failure`: the connection could not be made;
* `refused-stream`: HTTP/2 REFUSED_STREAM (the upstream never acted on the request);
* `retriable-status-codes`: a response status in `status_codes`;
* `retriable-grpc-statuses`: a trailers-only gRPC response whose `grpc-status` is in
  `grpc_statuses`."""

GRPCStatus = Annotated[int, Meta(ge=1, le=16)]
StatusCode = Annotated[int, Meta(ge=100, le=599)]


class RetryPolicy(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a route rule retries failed tries (`route_tables[].virtual_hosts[].rules[].retry`)."""

    num_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    """Retries after the first try (Gateway API `attempts` is the same count); 0: none."""
    retry_on: Annotated[list[RetryOn], Meta(max_length=7)] = msgspec.field(
        default_factory=lambda: ["connect-failure", "refused-stream", "gateway-error"])
    status_codes: Annotated[list[StatusCode], Meta(max_length=32)] = msgspec.field(
        default_factory=list)
    """Retried with `retriable-status-codes`."""
    grpc_statuses: Annotated[list[GRPCStatus], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    """gRPC status codes (numbers: 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, ...) retried with
    `retriable-grpc-statuses`."""
    backoff_base_ms: Annotated[int, Meta(ge=1, le=60_000)] = 25
    """Exponential backoff with full jitter: before retry n the proxy waits a uniformly random
    time in [0, min(backoff_max_ms, backoff_base_ms * 2^(n-1))]."""
    backoff_max_ms: Annotated[int, Meta(ge=1, le=600_000)] = 250
    retry_non_idempotent: bool = False
    """Retry POST, PATCH and CONNECT too; false: they are retried only when the upstream
    cannot have acted on them (connect failure, refused stream)."""
    max_body_bytes: Annotated[int, Meta(ge=0, le=16_777_216)] = 65_536
    """Request body kept for replay while it is being sent; a request with more is not
    retried (it is never delayed for it: the body is buffered while it is sent)."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for parts that contradict each other (the schema checks each
        alone); empty when the policy is coherent."""
        out: list[tuple[str, str]] = []
        if self.backoff_max_ms < self.backoff_base_ms:
            out.append(("backoff_max_ms", f"must not be shorter than backoff_base_ms "
                        f"({self.backoff_base_ms})"))
        if len(set(self.retry_on)) != len(self.retry_on):
            out.append(("retry_on", "lists a condition twice"))
        if self.status_codes and "retriable-status-codes" not in self.retry_on:
            out.append(("status_codes", "set, but retry_on does not list "
                        "retriable-status-codes"))
        if self.grpc_statuses and "retriable-grpc-statuses" not in self.retry_on:
            out.append(("grpc_statuses", "set, but retry_on does not list "
                        "retriable-grpc-statuses"))
        return out


class RetryBudget(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How many retries a cluster takes on top of its requests (`clusters[].retry_budget`):
    within any `ttl_ms` window, retries <= percent/100 x requests + min_retries_per_second x
    ttl.  A retry past it is not made (the failed try's answer goes to the client) and is
    counted in `tulle_proxy_upstream_retry_budget_exhausted_total`."""

    percent: Annotated[int, Meta(ge=0, le=100)] = 20
    min_retries_per_second: Annotated[int, Meta(ge=0, le=1_000_000)] = 10
    ttl_ms: Annotated[int, Meta(ge=1000, le=600_000)] = 10_000
