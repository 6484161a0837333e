"""The gRPC status a call ended with, as its caller saw it: one answer for the golden
metrics' `grpc_response_status` and the spans' `rpc.grpc.status_code` (audit ADR 0107).

Why a module of its own: both observers must tell the same story about a call, and the
answer has cases that are easy to get wrong.  The call's `grpc-status` when it got one (the
upstream's trailers or trailers-only head, or the proxy's own trailers-only answer:
`RequestStream.grpc_status`); otherwise what the caller's gRPC library reports: CANCELLED when
the caller left (flag `DC`), INTERNAL for an HTTP 200 without a status (the stream was reset
after its head, RST_STREAM INTERNAL_ERROR, or ended without trailers; gRPC's spec maps both to
INTERNAL), else gRPC's mapping of the HTTP status.  Never OK without an OK on the wire: that
once hid failed calls from every gRPC success rate.  A value the upstream sent outside 0..16
is UNKNOWN (`2`): a label's value is never the peer's bytes (attack review A2, ADR 0060).
"""

from __future__ import annotations

from typing import Final

GRPC_FOR_HTTP: Final = {400: "13", 401: "16", 403: "7", 404: "12", 429: "14", 502: "14",
                        503: "14", 504: "14"}
"""gRPC's HTTP-to-gRPC status mapping, for a call answered without a grpc-status."""
GRPC_CODES: Final = frozenset(str(i) for i in range(17))
"""The `grpc-status` values kept as they are."""
_CANCELLED: Final = "1"
_INTERNAL: Final = "13"
SERVER_ERRORS: Final = frozenset(("2", "4", "12", "13", "14", "15"))
"""The statuses that make a SERVER span an error (OpenTelemetry's gRPC conventions: the
server's fault; the others are the caller's).  A CLIENT span is an error for any but `0`."""


def is_grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request whose `content-type` is gRPC's (with an HTTP/2 head: the caller checks)."""
    for n, v in headers:
        if n == b"content-type":
            return v[:16] == b"application/grpc"
    return False


def call_status(grpc_status: str, status: int, flags: str) -> str:
    """The call's gRPC status code, as text (see the module's docstring)."""
    if grpc_status:
        return grpc_status if grpc_status in GRPC_CODES else "2"
    if "DC" in flags.split(","):
        return _CANCELLED
    if status == 200:
        return _INTERNAL
    return GRPC_FOR_HTTP.get(status, "2")


__all__ = ["GRPC_CODES", "GRPC_FOR_HTTP", "SERVER_ERRORS", "call_status", "is_grpc"]
