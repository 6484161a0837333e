"""Semantic checks of a listener's filter chains (ADR 0019): references, matches that can
be served, and no two chains that tie for a connection.

Kept apart from `validate.py` (which calls `chain_errors` per listener) because chain
selection's rules (specificity, overlap) are a topic of their own.
"""

from __future__ import annotations

import re

import msgspec

from tulle.errors import FieldError
from tulle.proxyconfig import network
from tulle.proxyconfig.address import matched_network
from tulle.proxyconfig.model import FilterChain, FilterChainMatch, Listener, ProxyConfig
from tulle.proxyconfig.tls_checks import tls_ref_errors

_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_SERVER_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def chain_errors(lst: Listener, p: str, cfg: ProxyConfig, tables: set[str],
                 clusters: set[str]) -> list[FieldError]:
    """Filter chains (ADR 0019): each refers to what exists, can be served as configured, and
    no two chains have the same match (one would never be chosen)."""
    out: list[FieldError] = []
    if lst.destinations:
        out.append(FieldError(f"{p}.filter_chains", "not together with destinations"))
    seen: dict[bytes, int] = {}
    names: set[str] = set()
    for j, fc in enumerate(lst.filter_chains):
        cp = f"{p}.filter_chains[{j}]"
        if fc.name in names:
            out.append(FieldError(f"{cp}.name", f"duplicate name {fc.name!r}"))
        names.add(fc.name)
        m = fc.match
        for k, a in enumerate(m.destination):
            import ipaddress  # not at module level: only CIDRs need it (ADR 0068)

            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                out.append(FieldError(f"{cp}.match.destination[{k}]",
                                      f"not an IP address or CIDR: {a!r}"))
        for k, n in enumerate(m.server_names):
            if len(n) > 253 or not _SERVER_NAME.match(n.lower()):
                out.append(FieldError(f"{cp}.match.server_names[{k}]", "must be a host name or "
                                      f"`*.` and a domain, got {n!r}"))
        if m.transport == "plaintext" and (m.server_names or m.alpn):
            out.append(FieldError(f"{cp}.match", "server_names and alpn need transport "
                                  "`tls` or `any`"))
        key = _match_key(fc)
        if key in seen:
            out.append(FieldError(f"{cp}.match", "the same match as filter_chains"
                                  f"[{seen[key]}]: one of them would never be chosen"))
        else:
            out += _overlap(lst.filter_chains, j, cp)
        seen.setdefault(key, j)
        if fc.route_table and fc.route_table not in tables:
            out.append(FieldError(f"{cp}.route_table", f"no route table named {fc.route_table!r}"))
        if fc.cluster and fc.cluster not in clusters:
            out.append(FieldError(f"{cp}.cluster", f"no cluster named {fc.cluster!r}"))
        if not (fc.route_table or fc.cluster or lst.cluster or lst.mode == "transparent"):
            out.append(FieldError(cp, "a filter chain needs a route_table or a cluster"))
        if fc.tls is not None:
            if m.transport != "tls":
                out.append(FieldError(f"{cp}.match.transport", "must be `tls` on a chain that "
                                      "terminates TLS"))
            if not (fc.tls.identity or (fc.tls.cert_file and fc.tls.key_file)):
                out.append(FieldError(f"{cp}.tls", "needs an identity or cert_file and key_file"))
            out += tls_ref_errors(fc.tls, f"{cp}.tls", cfg, server=True)
        if fc.network_filters:
            if fc.protocol != "tcp":
                out.append(FieldError(f"{cp}.network_filters", "only a chain with protocol "
                                      f"`tcp` takes network filters (this one is "
                                      f"{fc.protocol!r})"))
            for k, f in enumerate(fc.network_filters):
                out.extend(network.check(f, f"{cp}.network_filters[{k}]"))
    if lst.network_filters and lst.filter_chains:
        out.append(FieldError(f"{p}.network_filters", "with filter_chains, network filters "
                              "belong to each chain"))
    return out


def _values(m: FilterChainMatch) -> tuple[tuple[str, set[str]], ...]:
    """A match's list fields as the sets of values chain selection compares."""
    nets = set()
    for a in m.destination:
        try:
            nets.add(str(matched_network(a)))
        except ValueError:
            pass  # reported above
    return (("destination", nets), ("server name", {n.lower() for n in m.server_names}),
            ("ALPN", set(m.alpn)))


def _overlap(chains: list[FilterChain], j: int, cp: str) -> list[FieldError]:
    """Chain `j` against the chains before it: two chains with the same port and transport
    whose destination, server-name and ALPN lists each share a value (or are both empty)
    tie for a connection with those values, and only list order would decide (Envoy refuses
    them as "multiple filter chains with the same matching rules")."""
    m = chains[j].match
    mine = _values(m)
    for i in range(j):
        other = chains[i].match
        if other.destination_port != m.destination_port or other.transport != m.transport:
            continue
        shared = []
        for (what, a), (_, b) in zip(mine, _values(other), strict=True):
            if a or b:
                common = a & b
                if not common:
                    break
                shared.append(f"{what} {min(common)!r}")
        else:
            if shared:
                return [FieldError(f"{cp}.match", f"overlaps filter_chains[{i}] ({shared[0]}): "
                                   "a connection matching both would be decided by list "
                                   "order")]
    return []


def _match_key(fc: FilterChain) -> bytes:
    m = fc.match
    return msgspec.json.encode([m.destination_port, sorted(m.destination),
                                sorted(n.lower() for n in m.server_names), m.transport,
                                sorted(m.alpn)])
