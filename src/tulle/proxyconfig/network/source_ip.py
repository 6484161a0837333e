"""`source_ip`: L4 authorization by the client's address (Envoy's RBAC network filter with
`source_ip` principals, reduced to address ranges).

Runtime: `tulle.dataplane.network.source_ip`.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from tulle.errors import FieldError


class SourceIP(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
               tag_field="type", tag="source_ip"):
    """Admit a connection by its peer address: `deny` is checked first, then `allow`."""

    allow: list[str] = msgspec.field(default_factory=list)
    """CIDRs (or single addresses) whose clients are admitted; empty admits every client that
    `deny` does not name."""
    deny: list[str] = msgspec.field(default_factory=list)
    """CIDRs (or single addresses) whose clients are refused, whatever `allow` says."""


def check(cfg: SourceIP, path: str) -> list[FieldError]:
    out: list[FieldError] = []
    for key, items in (("allow", cfg.allow), ("deny", cfg.deny)):
        for i, text in enumerate(items):
            import ipaddress  # only for CIDRs given (ADR 0068)

            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                out.append(FieldError(f"{path}.{key}[{i}]",
                                      f"not an IP address or CIDR: {text!r}"))
    if not cfg.allow and not cfg.deny:
        out.append(FieldError(path, "a source_ip filter needs `allow` or `deny`"))
    return out
