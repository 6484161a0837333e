"""Authorization configs: the `Authorization` HTTP filter and the policies it (and the L4 `authz`
network filter, `proxyconfig/network/authz.py`) evaluate.

Semantics are Istio's `AuthorizationPolicy` (ADR 0031), evaluated by the destination's proxy on
its inbound side:

* a request (a connection, at L4) is refused when a `DENY` policy matches it;
* else, when the list holds any `ALLOW` policy, it is admitted only when one matches;
* `AUDIT` policies only count and record what they match; `dry_run` policies of any action are
  evaluated apart and only count and record what they *would* have refused.

A policy matches when one of its rules does; a rule when one of its `sources` and one of its
`operations` match (an empty list matches everything); a source or an operation when every
field it sets matches (each field: any one of its values).  Identity fields (`principals`,
`namespaces`, `service_accounts`) read the peer's verified SPIFFE ID: without mTLS there is none,
and they never match.  Ports are not here: the compiler resolves them per inbound listener.

Patterns (`principals`, `paths`, header `values`): `*` any value, `x*` a prefix, `*x` a suffix,
anything else exact.  The runtime is `tulle/dataplane/filters/authz.py` (and
`dataplane/network/authz.py`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from tulle.errors import FieldError

Pattern = Annotated[str, Meta(min_length=1, max_length=1024)]
HeaderName = Annotated[str, Meta(min_length=1, max_length=256,
                                 pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
Many = Meta(max_length=64)

_NAMESPACE = re.compile(r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$")
_ACCOUNT = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class AuthzHeader(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A request header condition: the header (repeated values joined with `,`) matches one of
    `values`."""

    name: HeaderName
    values: Annotated[list[Pattern], Meta(min_length=1, max_length=64)]


class AuthzSource(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who sends the request; every field set must match (empty: any)."""

    principals: Annotated[list[Pattern], Many] = msgspec.field(default_factory=list)
    """Peer SPIFFE IDs (patterns); needs a verified peer identity (mTLS)."""
    namespaces: Annotated[list[str], Many] = msgspec.field(default_factory=list)
    """The namespace in the peer's SPIFFE ID (`*`: any authenticated peer)."""
    service_accounts: Annotated[list[str], Many] = msgspec.field(default_factory=list)
    """`namespace/account` pairs of the peer's SPIFFE ID."""
    ip_blocks: Annotated[list[str], Many] = msgspec.field(default_factory=list)
    """CIDRs (or addresses) of the connection's peer address."""
    trust_domains: Annotated[list[str], Many] = msgspec.field(default_factory=list)
    """The trust domains whose SPIFFE IDs `namespaces` and `service_accounts` read (the
    mesh's and its aliases, ADR 0096): a peer's ID in another one matches neither, whatever
    CA signed it.  Empty: any trust domain (a config from before the field)."""


class AuthzOperation(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the request asks for; every field set must match (empty: any).  At L4 (opaque TCP)
    an operation with HTTP fields never matches in ALLOW and AUDIT policies and matches on its
    other fields in DENY policies (fail closed, as Istio)."""

    paths: Annotated[list[Pattern], Many] = msgspec.field(default_factory=list)
    """Request paths without the query (patterns, after the proxy's path normalisation)."""
    methods: Annotated[list[str], Meta(max_length=16)] = msgspec.field(default_factory=list)
    headers: Annotated[list[AuthzHeader], Meta(max_length=16)] = msgspec.field(
        default_factory=list)


class AuthzRule(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    sources: Annotated[list[AuthzSource], Many] = msgspec.field(default_factory=list)
    """Any one matches; empty: any source."""
    operations: Annotated[list[AuthzOperation], Many] = msgspec.field(default_factory=list)
    """Any one matches; empty: any operation."""


class AuthzPolicy(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=320)]
    """`namespace/name` of the policy: the 403 body, the metric label and the request record
    name it."""
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    dry_run: bool = False
    """Evaluated apart: only counts and records what it would refuse (`result="dry_run_deny"`)."""
    rules: Annotated[list[AuthzRule], Many] = msgspec.field(default_factory=list)
    """Any one matches.  An ALLOW policy without rules allows nothing (deny-all)."""


class Authorization(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                    tag_field="type", tag="Authorization"):
    """`{type: Authorization}` in `RouteRule.filters`: the rule's requests pass `policies`."""

    policies: Annotated[list[AuthzPolicy], Meta(min_length=1, max_length=256)]


def _pattern_error(value: str) -> str | None:
    if value == "*":
        return None
    body = value[1:] if value.startswith("*") else value[:-1] if value.endswith("*") else value
    return f"`*` may only start or end a pattern: {value!r}" if "*" in body else None


def policy_errors(policies: list[AuthzPolicy], path: str) -> list[FieldError]:
    """The checks types cannot express: patterns, CIDRs, namespaces, account pairs, methods,
    unique policy names."""
    out: list[FieldError] = []
    seen: set[str] = set()
    for i, pol in enumerate(policies):
        pp = f"{path}.policies[{i}]"
        if pol.name in seen:
            out.append(FieldError(f"{pp}.name", f"duplicate policy name {pol.name!r}"))
        seen.add(pol.name)
        for j, rule in enumerate(pol.rules):
            rp = f"{pp}.rules[{j}]"
            for k, s in enumerate(rule.sources):
                sp = f"{rp}.sources[{k}]"
                for n, v in enumerate(s.principals):
                    if (e := _pattern_error(v)) is not None:
                        out.append(FieldError(f"{sp}.principals[{n}]", e))
                for n, v in enumerate(s.namespaces):
                    if not _NAMESPACE.match(v):
                        out.append(FieldError(f"{sp}.namespaces[{n}]",
                                              f'not a namespace name or "*": {v!r}'))
                for n, v in enumerate(s.service_accounts):
                    if not _ACCOUNT.match(v):
                        out.append(FieldError(f"{sp}.service_accounts[{n}]",
                                              f"not namespace/account: {v!r}"))
                for n, v in enumerate(s.ip_blocks):
                    import ipaddress  # only for CIDRs given (ADR 0068)

                    try:
                        ipaddress.ip_network(v, strict=False)
                    except ValueError:
                        out.append(FieldError(f"{sp}.ip_blocks[{n}]",
                                              f"not an IP address or CIDR: {v!r}"))
            for k, o in enumerate(rule.operations):
                op = f"{rp}.operations[{k}]"
                for n, v in enumerate(o.paths):
                    if (e := _pattern_error(v)) is not None:
                        out.append(FieldError(f"{op}.paths[{n}]", e))
                    elif v != "*" and not v.startswith(("/", "*")):
                        out.append(FieldError(f"{op}.paths[{n}]", f'must start with "/": {v!r}'))
                for n, v in enumerate(o.methods):
                    if not re.fullmatch(r"[A-Z]{1,32}", v):
                        out.append(FieldError(f"{op}.methods[{n}]",
                                              f"not an upper-case method: {v!r}"))
                for n, h in enumerate(o.headers):
                    for m, v in enumerate(h.values):
                        if (e := _pattern_error(v)) is not None:
                            out.append(FieldError(f"{op}.headers[{n}].values[{m}]", e))
    return out


def errors(cfg: Authorization, path: str) -> list[FieldError]:
    return policy_errors(cfg.policies, path)
