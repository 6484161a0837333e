"""Response flags as Envoy spells them, computed from a request's record.

Why one module: the access log (`%RESPONSE_FLAGS%`, `response_flags`) and the golden metrics
(`istio_requests_total{response_flags=...}`) must say the same thing about the same request,
and dashboards and log queries written for Envoy/Istio read Envoy's codes.  The request
stream sets its flags where the decision is made (`stream.flags`: the router, the pools, the
filters), comma-joined when several apply (`UF,URX`), some of them Tulle's own (`OL`,
`RBAC`, `UB`).  This module turns that raw string into Envoy's canonical form once per
distinct string (there are a few dozen; the cache is bounded anyway):

* `response_flags(raw)`: Envoy's short codes, in Envoy's order, comma-joined; "-" for none;
* `response_flags_long(raw)`: Envoy's long names (`%RESPONSE_FLAGS_LONG%`), "-" for none;
* `flag_details(raw)`: what a Tulle-only code said that Envoy's codes cannot (Envoy's
  `%RESPONSE_CODE_DETAILS%` role): "" when nothing.

Tulle's own codes map onto Envoy's where Envoy has one: `OL` (the overload guard refused
the request) is Envoy's `OM` (overload manager); `UB` (a backend the control plane could not
resolve, answered 500) is `NC` (no cluster found).  `RBAC` has no Envoy flag (Envoy's RBAC
filter sets none; it writes the response code details): it becomes the detail
`rbac_access_denied` and no flag.  Nor has `NA` (a request on a connection the listener no
longer admits since a swap, answered 403: ADR 0127): the detail `connection_not_admitted`.
A code this module does not know is kept as it is (after the known ones), never dropped: a
new flag shows up in logs before it is named here.
"""

from __future__ import annotations

from typing import Final

# Envoy's short and long names, in the order of its ResponseFlag enum, which is the order
# Envoy prints them in (source/common/stream_info/utility.cc).
_ENVOY: tuple[tuple[str, str], ...] = (
    ("LH", "FailedLocalHealthCheck"),
    ("UH", "NoHealthyUpstream"),
    ("UT", "UpstreamRequestTimeout"),
    ("LR", "LocalReset"),
    ("UR", "UpstreamRemoteReset"),
    ("UF", "UpstreamConnectionFailure"),
    ("UC", "UpstreamConnectionTermination"),
    ("UO", "UpstreamOverflow"),
    ("NR", "NoRouteFound"),
    ("DI", "DelayInjected"),
    ("FI", "FaultInjected"),
    ("RL", "RateLimited"),
    ("UAEX", "UnauthorizedExternalService"),
    ("RLSE", "RateLimitServiceError"),
    ("DC", "DownstreamConnectionTermination"),
    ("URX", "UpstreamRetryLimitExceeded"),
    ("SI", "StreamIdleTimeout"),
    ("IH", "InvalidEnvoyRequestHeaders"),
    ("DPE", "DownstreamProtocolError"),
    ("UMSDR", "UpstreamMaxStreamDurationReached"),
    ("RFCF", "ResponseFromCacheFilter"),
    ("NFCF", "NoFilterConfigFound"),
    ("DT", "DurationTimeout"),
    ("UPE", "UpstreamProtocolError"),
    ("NC", "NoClusterFound"),
    ("OM", "OverloadManager"),
    ("DF", "DnsResolutionFailed"),
    ("DO", "DropOverload"),
    ("DR", "DownstreamRemoteReset"),
    ("UDO", "UnconditionalDropOverload"),
)
ENVOY_FLAGS: frozenset[str] = frozenset(short for short, _ in _ENVOY)
"""Every short code Envoy defines."""
_RANK: Final = {short: i for i, (short, _) in enumerate(_ENVOY)}
_LONG: Final = dict(_ENVOY)

_ALIASES: Final = {"OL": "OM", "UB": "NC"}
"""Tulle's codes that mean an Envoy code."""
_DETAILS: Final = {"RBAC": "rbac_access_denied", "UB": "backend_not_resolved",
            "OL": "overload_rejected", "NA": "connection_not_admitted"}
"""What Tulle's own codes add (the response code details)."""
_NO_FLAG: Final = frozenset({"RBAC", "NA"})
"""Tulle's codes that are no Envoy flag at all."""

_CACHE_MAX: Final = 256
"""Distinct raw strings remembered; raw flags come from the proxy's code, not from peers,
so a few dozen exist; the bound keeps a bug from growing the cache."""

_short: dict[str, str] = {"": "-"}
_long: Final[dict[str, str]] = {"": "-"}
_details: Final[dict[str, str]] = {"": ""}


def _codes(raw: str) -> list[str]:
    """The Envoy codes of a raw flags string, deduplicated, in Envoy's order (unknown codes
    after the known ones, in their own order)."""
    seen: list[str] = []
    for part in raw.split(","):
        code = part.strip()
        if not code or code in _NO_FLAG:
            continue
        code = _ALIASES.get(code, code)
        if code not in seen:
            seen.append(code)
    seen.sort(key=lambda c: _RANK.get(c, len(_RANK)))
    return seen


def _remember(cache: dict[str, str], raw: str, value: str) -> str:
    if len(cache) < _CACHE_MAX:
        cache[raw] = value
    return value


def response_flags(raw: str) -> str:
    """Envoy's `%RESPONSE_FLAGS%` for a record's raw flags: `UF,URX`; "-" for none."""
    value = _short.get(raw)
    if value is not None:
        return value
    return _remember(_short, raw, ",".join(_codes(raw)) or "-")


def response_flags_long(raw: str) -> str:
    """Envoy's `%RESPONSE_FLAGS_LONG%`: `UpstreamConnectionFailure,UpstreamRetryLimitExceeded`;
    "-" for none (an unknown code is printed as it is)."""
    value = _long.get(raw)
    if value is not None:
        return value
    return _remember(_long, raw, ",".join(_LONG.get(c, c) for c in _codes(raw)) or "-")


def flag_details(raw: str) -> str:
    """What Tulle's own codes in `raw` say beyond Envoy's flags (`rbac_access_denied`);
    "" when nothing."""
    value = _details.get(raw)
    if value is not None:
        return value
    found = [_DETAILS[c] for c in (p.strip() for p in raw.split(",")) if c in _DETAILS]
    return _remember(_details, raw, ",".join(found))
