"""`rate_limit`: new opaque TCP connections per interval through a listener's chain (Envoy's
`local_ratelimit` network filter; issue 10 item 9, ADR 0041).

A token bucket of `connections` tokens refilled over `interval_ms`, per worker process; a
connection that finds it empty is reset before anything is dialled, with reason
`rate_limited`.  It runs after authorization and the concurrency limit (`network/order.py`),
so refused peers spend no token.

Runtime: `tulle.dataplane.network.rate_limit`.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from tulle.errors import FieldError


class ConnectionRateLimit(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                          tag_field="type", tag="rate_limit"):
    """New connections admitted per interval (a burst of `connections`, refilled evenly)."""

    connections: Annotated[int, Meta(ge=1, le=10_000_000)]
    interval_ms: Annotated[int, Meta(ge=1, le=86_400_000)]


def check(cfg: ConnectionRateLimit, path: str) -> list[FieldError]:
    return []
