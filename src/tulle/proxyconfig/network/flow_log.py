"""`flow_log`: one log line per opaque TCP connection, written when it closes (an observer).

Runtime: `tulle.dataplane.network.flow_log`.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from tulle.errors import FieldError


class FlowLog(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
              tag_field="type", tag="flow_log"):
    """Log each connection's record (peer, destination, upstream, bytes, duration, reason)."""

    logger: Annotated[str, Meta(min_length=1, max_length=100,
                                pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")] = "tulle.flow"
    """The Python logger the JSON lines go to, at INFO."""


def check(cfg: FlowLog, path: str) -> list[FieldError]:
    return []
