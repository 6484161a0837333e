"""`authz`: L4 authorization of opaque TCP connections by the same policies as the HTTP
`Authorization` filter (`proxyconfig/filters/authz.py`, ADR 0031).

At L4 there is no request: operations with HTTP fields (paths, methods, headers) never match in
ALLOW and AUDIT policies and match on their other fields in DENY policies (fail closed).  A
refused connection is reset before anything is dialled.  Runtime:
`tulle.dataplane.network.authz`.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from tulle.errors import FieldError
from tulle.proxyconfig.filters.authz import AuthzPolicy, policy_errors


class NetworkAuthz(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                   tag_field="type", tag="authz"):
    """Admit a connection by `policies` (DENY first, then ALLOW; AUDIT and dry-run count)."""

    policies: Annotated[list[AuthzPolicy], Meta(min_length=1, max_length=256)]


def check(cfg: NetworkAuthz, path: str) -> list[FieldError]:
    return policy_errors(cfg.policies, path)
