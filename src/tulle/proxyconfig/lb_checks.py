"""Checks of a cluster's balancer settings that its types cannot express (ADR 0038).

Why a module: `validate.py` is the contract's one entry point but is long already; these rules
belong together (which settings go with which `lb_policy`), and each answer names its path.
Nothing is accepted and then ignored: hash policies on a balancer that does not hash, slow
start or locality on one that hashes, a Maglev table that is not a prime, a header name no
request can carry.
"""

from __future__ import annotations

import re

from tulle.errors import FieldError
from tulle.proxyconfig.model import Cluster

HASHING = frozenset({"ring_hash", "maglev"})
MAX_RING = 1_048_576
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
"""An HTTP field name (RFC 9110 token); anything else cannot be a header of a request."""
_COOKIE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_PARAM = re.compile(r"^[^&=#\s]{1,256}$")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def cluster_lb_errors(c: Cluster, p: str) -> list[FieldError]:
    """Errors of cluster `c` (at path `p`, e.g. `clusters[3]`) in its balancer settings."""
    out: list[FieldError] = []
    lb = c.lb
    hashing = c.lb_policy in HASHING
    if hashing and c.protocol == "tcp":
        out.append(FieldError(f"{p}.lb_policy", f"{c.lb_policy} hashes requests; a tcp "
                              "cluster has none (the relay does not pass a key)"))
    if lb is None:
        if hashing:
            out.append(FieldError(f"{p}.lb.hash_policies", f"required with lb_policy "
                                  f"{c.lb_policy} (what to hash)"))
        return out
    if hashing and not lb.hash_policies:
        out.append(FieldError(f"{p}.lb.hash_policies", f"required with lb_policy {c.lb_policy} "
                              "(what to hash)"))
    if not hashing and lb.hash_policies:
        out.append(FieldError(f"{p}.lb.hash_policies", f"lb_policy {c.lb_policy} does not hash "
                              "(use ring_hash or maglev)"))
    if hashing and lb.slow_start_window_ms:
        out.append(FieldError(f"{p}.lb.slow_start_window_ms", "not with a hashing balancer "
                              "(a ramp would move keys)"))
    if hashing and lb.locality_aware:
        out.append(FieldError(f"{p}.lb.locality_aware", "not with a hashing balancer "
                              "(affinity wins over locality)"))
    points = lb.ring_points * sum(e.weight for e in c.endpoints)
    if c.lb_policy == "ring_hash" and points > MAX_RING:
        out.append(FieldError(f"{p}.lb.ring_points", f"the ring would have {points} points "
                              f"(ring_points x the endpoints' weights); at most {MAX_RING}"))
    if c.lb_policy == "maglev" and not _is_prime(lb.maglev_table_size):
        out.append(FieldError(f"{p}.lb.maglev_table_size",
                              f"must be a prime, got {lb.maglev_table_size}"))
    for i, h in enumerate(lb.hash_policies):
        hp = f"{p}.lb.hash_policies[{i}].name"
        if h.type == "source_ip":
            if h.name:
                out.append(FieldError(hp, "not with type source_ip"))
            continue
        if not h.name:
            out.append(FieldError(hp, f"required with type {h.type}"))
        elif h.type == "header" and not _TOKEN.match(h.name):
            out.append(FieldError(hp, f"{h.name!r} cannot be a header name (an HTTP token: "
                                  "letters, digits and !#$%&'*+.^_`|~-)"))
        elif h.type == "cookie" and not _COOKIE.match(h.name):
            out.append(FieldError(hp, f"{h.name!r} cannot be a cookie name"))
        elif h.type == "query_parameter" and not _PARAM.match(h.name):
            out.append(FieldError(hp, f"{h.name!r} cannot be a query parameter name"))
    return out


__all__ = ["cluster_lb_errors"]
