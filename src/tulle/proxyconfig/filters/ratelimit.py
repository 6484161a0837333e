"""Rate limit config: the `RateLimit` HTTP filter (issue 10 item 9, ADR 0041).

Two independent limits, either or both; a request must pass both (local first: it costs no
round trip).

* `local`: a token bucket of `requests` tokens refilled over `interval_ms`, per key: `by:
  route` one bucket for the rule, `source` one per caller (its verified SPIFFE ID under mTLS,
  else its IP address), `header` one per value of `header` (a request without it shares the
  bucket of the empty value).  At most `max_buckets` keyed buckets are kept (least recently
  used dropped: a dropped key starts again full).
* `global`: a fixed-window counter in Redis at `redis` (`host:port`), shared by every proxy
  that has the same `key`: at most `requests` per `interval_ms` window across all of them.
  One round trip per request (`SET ... PX NX`, `INCR`, `PTTL` pipelined: any Redis since
  2.6.12), bounded by `timeout_ms`.  When Redis does not answer in time, is unreachable, or
  holds the counter without an expiry (then given one again), `failure_mode` decides: `open` admits through a
  local fallback bucket (`fallback_requests` per `interval_ms`, per proxy; 0: no local limit),
  `closed` answers 429.

A limited request is answered 429 (gRPC: `RESOURCE_EXHAUSTED`) with `retry-after` and the
IETF `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers), flag
`RL`.  The runtime side is `tulle/dataplane/filters/ratelimit.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from tulle.errors import FieldError
from tulle.proxyconfig.filters.headers import HeaderName

Count = Annotated[int, Meta(ge=1, le=1_000_000_000)]
IntervalMs = Annotated[int, Meta(ge=1, le=86_400_000)]
OWNED = frozenset({"host", "content-length", "transfer-encoding", "connection", "te",
                   "upgrade", "keep-alive", "proxy-connection", "authorization", "cookie",
                   "proxy-authorization"})
"""Header names a limit may not be keyed by: framing fields the proxy owns, and credentials,
whose values would become bucket keys held in memory (and in Redis)."""


class LocalLimit(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    requests: Count
    """Bucket size: requests admitted in a burst; the bucket refills at requests/interval."""
    interval_ms: IntervalMs
    by: Literal["route", "source", "header"] = "route"
    header: HeaderName | None = None
    """The header whose value keys the bucket (`by: header` only)."""
    max_buckets: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """Keyed buckets kept at most (`source` / `header`), least recently used dropped."""


class RedisTLS(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """TLS to Redis (`tls-port`), the server verified against `ca_file` or the system's CAs."""

    ca_file: Annotated[str, Meta(max_length=4096)] = ""
    """PEM bundle on the proxy's host to verify Redis by; empty: the system's CAs."""
    server_name: Annotated[str, Meta(max_length=253)] = ""
    """The name (or IP) Redis's certificate must carry; empty: the host of `redis`."""


class GlobalLimit(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    requests: Count
    """Requests admitted per window by all proxies sharing `key`."""
    interval_ms: IntervalMs
    """The window (fixed windows aligned on multiples of it)."""
    redis: Annotated[str, Meta(min_length=3, max_length=300)]
    """`host:port` of the Redis server (`[v6]:port` for IPv6)."""
    key: Annotated[str, Meta(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9._:/|+-]+$")]
    """The counter's name; proxies with the same key share the limit."""
    failure_mode: Literal["open", "closed"] = "open"
    timeout_ms: Annotated[int, Meta(ge=1, le=1000)] = 10
    """How long a request waits for Redis before `failure_mode` applies."""
    fallback_requests: Annotated[int, Meta(ge=0, le=1_000_000_000)] = 0
    """`failure_mode: open`: requests per interval this proxy admits while Redis is out;
    0: no local limit."""
    username: Annotated[str, Meta(max_length=128, pattern=r"^[!-~]*$")] = ""
    """Redis ACL user for `AUTH` (with `password_file`); empty: the default user."""
    password_file: Annotated[str, Meta(max_length=4096)] = ""
    """A file on the proxy's host holding the Redis password (read at each connection, so a
    rotated password is picked up; never sent to or through the control plane); empty: no
    `AUTH`."""
    tls: RedisTLS | None = None
    """Speak TLS to Redis; null: plaintext."""


class RateLimit(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                tag_field="type", tag="RateLimit"):
    """Admit the rule's requests within local and/or global limits; 429 past them."""

    local: LocalLimit | None = None
    global_: GlobalLimit | None = msgspec.field(default=None, name="global")
    """(`global` on the wire: a Python keyword.)"""
    name: Annotated[str, Meta(max_length=253)] = ""
    """The policy the filter stands for (metrics label `policy`); empty: unnamed."""


def split_address(text: str) -> tuple[str, int] | None:
    """`host:port` / `[v6]:port` -> (host, port); None when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
    n = int(port)
    return (host, n) if 1 <= n <= 65535 else None


def errors(f: RateLimit, path: str) -> list[FieldError]:
    out: list[FieldError] = []
    if f.local is None and f.global_ is None:
        out.append(FieldError(path, "a RateLimit filter needs `local`, `global` or both"))
    if f.local is not None:
        lp = f"{path}.local"
        if f.local.by == "header" and f.local.header is None:
            out.append(FieldError(f"{lp}.header", "required with `by: header`"))
        if f.local.by != "header" and f.local.header is not None:
            out.append(FieldError(f"{lp}.header", "only with `by: header`"))
        if f.local.header is not None and f.local.header.lower() in OWNED:
            out.append(FieldError(f"{lp}.header", f"{f.local.header!r} cannot key a limit "
                                  "(framing field or credential)"))
    if f.global_ is not None and split_address(f.global_.redis) is None:
        out.append(FieldError(f"{path}.global.redis", "expected host:port"))
    g = f.global_
    if g is not None:
        for field, value in (("password_file", g.password_file),
                             ("tls.ca_file", g.tls.ca_file if g.tls else "")):
            if value and not value.startswith("/"):
                out.append(FieldError(f"{path}.global.{field}", "must be an absolute path"))
        if g.username and not g.password_file:
            out.append(FieldError(f"{path}.global.username", "needs password_file"))
    return out
