"""`connection_limit`: a cap on the opaque TCP connections a listener relays at once (Envoy's
`connection_limit` network filter).

Unlike `listeners[].max_connections` (every downstream connection, reset at accept, before
anything is known about it), this runs in the chain: after authorization, so refused peers
never hold a slot, with a counted reason and a flow-log record.

Runtime: `tulle.dataplane.network.connection_limit`.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from tulle.errors import FieldError


class ConnectionLimit(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                      tag_field="type", tag="connection_limit"):
    """Relays at once through this listener (per worker process); one more is reset."""

    max_connections: Annotated[int, Meta(ge=1, le=10_000_000)]
    """Connections relayed at once (counted from admission to close); the next is rejected
    with reason `over_limit`."""


def check(cfg: ConnectionLimit, path: str) -> list[FieldError]:
    return []
