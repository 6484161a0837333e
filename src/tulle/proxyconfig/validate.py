"""Validate a raw proxy configuration and report *every* problem with its field path.

msgspec stops at the first error; an operator fixing a file wants all of them at once.  So
validation walks the raw document against the model's type information (structure, types,
bounds, unknown fields), then checks what types cannot express (cross references, unique names,
addresses).  Only a document with no errors is converted into a `ProxyConfig`.

Error form: `listeners[0].port: must be <= 65535` (the path is dotted, list indices in
brackets), the same form the control plane uses for user resources.

The structural walk lives in `walk.py`; TLS and key-material checks in `tls_checks.py`, filter
chains in `chain_checks.py`, cluster balancers in `lb_checks.py`.  This module runs them in
order and keeps the rest of the semantic checks (names, references, routes).
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from tulle.errors import FieldError
from tulle.proxyconfig import dns, filters, health, network, regex, telemetry_checks
from tulle.proxyconfig.address import (
    WILDCARDS,
    additional_address_errors,
    hostport,
    matched_network,
    numeric_family,
    overlaps,
    packed,
)
from tulle.proxyconfig.chain_checks import chain_errors
from tulle.proxyconfig.lb_checks import cluster_lb_errors
from tulle.proxyconfig.logs import check as log_checks
from tulle.proxyconfig.model import Listener, ProxyConfig, RouteMatch
from tulle.proxyconfig.tls_checks import key_material_errors, tls_ref_errors
from tulle.proxyconfig.walk import errors_in, schema_path


class ConfigError(ValueError):
    """A configuration was rejected; `errors` lists every reason with its field path."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _duplicates(names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for n in names:
        (dup if n in seen else seen).add(n)
    return dup


def _source_errors(lst: Listener, p: str) -> list[FieldError]:
    """`Listener.sources`: CIDRs or addresses, on a listener whose accept side checks them
    (the detecting and filter-chain drivers; ADR 0098)."""
    out: list[FieldError] = []
    for k, s in enumerate(lst.sources):
        try:
            matched_network(s)
        except ValueError:
            out.append(FieldError(f"{p}.sources[{k}]", f"not an address or CIDR: {s!r}"))
    if lst.sources and lst.mode != "transparent" and not lst.filter_chains:
        out.append(FieldError(f"{p}.sources", "only a transparent listener or one with "
                                              "filter_chains checks its connections' sources"))
    return out


def _is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address, as `ipaddress.ip_address` decides (`proxyconfig.address`)."""
    return numeric_family(text) is not None


def _semantic(cfg: ProxyConfig) -> list[FieldError]:
    out: list[FieldError] = []
    clusters = {c.name for c in cfg.clusters}
    tables = {t.name for t in cfg.route_tables}
    named: tuple[tuple[str, list[str]], ...] = (
        ("listeners", [x.name for x in cfg.listeners]),
        ("clusters", [x.name for x in cfg.clusters]),
        ("route_tables", [x.name for x in cfg.route_tables]),
        ("identities", [x.name for x in cfg.identities]),
        ("trust_bundles", [x.name for x in cfg.trust_bundles]),
    )
    for kind, names in named:
        dup = _duplicates(names)
        for i, name in enumerate(names):
            if name in dup:
                out.append(FieldError(f"{kind}[{i}].name", f"duplicate name {name!r}"))
    bound: dict[int, list[tuple[tuple[socket.AddressFamily, bytes], int]]] = {}
    for i, lst in enumerate(cfg.listeners):
        p = f"listeners[{i}]"
        if not _is_ip(lst.address):
            out.append(FieldError(f"{p}.address", f"must be an IP address, got {lst.address!r}"))
        out += additional_address_errors(lst.address, lst.additional_addresses, p)
        out += _source_errors(lst, p)
        if lst.port:
            claims = bound.setdefault(lst.port, [])
            for where, addr in ((f"{p}.port", lst.address), *(
                    (f"{p}.additional_addresses[{k}]", a)
                    for k, a in enumerate(lst.additional_addresses))):
                key = packed(addr)
                if key is None:
                    continue  # refused above
                keys = [key]
                if key == (socket.AF_INET6, WILDCARDS[socket.AF_INET6]) and \
                        not lst.additional_addresses:  # `::` alone takes IPv4 too
                    keys.append((socket.AF_INET, WILDCARDS[socket.AF_INET]))
                other = next((j for k in keys for held, j in claims if j != i
                              and overlaps(k, held)
                              and not (lst.reuse_port and cfg.listeners[j].reuse_port)), None)
                if other is not None:
                    out.append(FieldError(where, f"{hostport(addr, lst.port)} is already "
                                          f"used by listeners[{other}]"))
                claims.extend((k, i) for k in keys)
        elif cfg.settings.workers > 1:  # each worker would bind its own random port
            out.append(FieldError(f"{p}.port", "must not be 0 when settings.workers > 1"))
        if lst.route_table and lst.route_table not in tables:
            out.append(FieldError(f"{p}.route_table", f"no route table named {lst.route_table!r}"))
        if lst.cluster and lst.cluster not in clusters:
            out.append(FieldError(f"{p}.cluster", f"no cluster named {lst.cluster!r}"))
        if lst.mode == "explicit" and not (lst.route_table or lst.cluster or lst.filter_chains):
            out.append(FieldError(p, "an explicit listener needs a route_table or a cluster"))
        if lst.mode == "explicit" and lst.destinations:
            out.append(FieldError(f"{p}.destinations", "only transparent listeners use "
                                  "destinations"))
        if lst.protocol == "tcp" and not lst.cluster and lst.mode == "explicit":
            out.append(FieldError(f"{p}.cluster", "a tcp listener needs a cluster"))
        if lst.tls is not None and not ((lst.tls.cert_file and lst.tls.key_file)
                                        or lst.tls.identity):
            out.append(FieldError(f"{p}.tls", "a TLS listener needs cert_file and key_file"
                                  " (or an identity)"))
        if lst.tls is not None:
            out += tls_ref_errors(lst.tls, f"{p}.tls", cfg, server=True)
        if lst.filter_chains:
            out += chain_errors(lst, p, cfg, tables, clusters)
        if lst.network_filters:
            out.extend(_network_filters(lst, p))
        for j, d in enumerate(lst.destinations):
            dp = f"{p}.destinations[{j}]"
            if d.address:
                import ipaddress

                try:
                    ipaddress.ip_network(d.address, strict=False)
                except ValueError:
                    out.append(FieldError(f"{dp}.address", f"not an IP address or CIDR: "
                                          f"{d.address!r}"))
            if d.route_table and d.route_table not in tables:
                out.append(FieldError(f"{dp}.route_table",
                                      f"no route table named {d.route_table!r}"))
            if d.cluster and d.cluster not in clusters:
                out.append(FieldError(f"{dp}.cluster", f"no cluster named {d.cluster!r}"))
            if d.refuse and (d.route_table or d.cluster):
                out.append(FieldError(f"{dp}.refuse", "a refused destination names no "
                                      "route_table or cluster"))
            elif not (d.route_table or d.cluster or d.refuse):
                out.append(FieldError(dp, "a destination needs a route_table or a cluster "
                                      "(or refuse)"))
    for i, table in enumerate(cfg.route_tables):
        for j, vh in enumerate(table.virtual_hosts):
            vp = f"route_tables[{i}].virtual_hosts[{j}]"
            for k, dom in enumerate(vh.domains):
                if not dom or (dom != "*" and dom.count("*") > 1) or (
                    "*" in dom and not (dom.startswith("*") or dom.endswith("*"))
                ):
                    out.append(FieldError(f"{vp}.domains[{k}]", "must be a host name, `*`, or "
                                          f"one leading or trailing wildcard, got {dom!r}"))
            for k, rule in enumerate(vh.rules):
                rp = f"{vp}.rules[{k}]"
                if (rule.backend_timeout_ms and rule.timeout_ms
                        and rule.backend_timeout_ms > rule.timeout_ms):
                    out.append(FieldError(f"{rp}.backend_timeout_ms", "must not be longer than "
                                          f"timeout_ms ({rule.timeout_ms})"))
                if rule.retry is not None:
                    out.extend(FieldError(f"{rp}.retry.{f}", msg) for f, msg in
                               rule.retry.problems())
                if not rule.backends:
                    out.append(FieldError(f"{rp}.backends", "at least one backend is required"))
                elif sum(b.weight for b in rule.backends) == 0:
                    out.append(FieldError(f"{rp}.backends", "weights must not all be zero"))
                for m, b in enumerate(rule.backends):
                    if b.cluster not in clusters:
                        out.append(FieldError(f"{rp}.backends[{m}].cluster",
                                              f"no cluster named {b.cluster!r}"))
                for m, match in enumerate(rule.matches):
                    if match.path.type == "RegularExpression":
                        out += _regex(match.path.value, f"{rp}.matches[{m}].path.value")
                    elif not match.path.value.startswith("/"):
                        out.append(FieldError(f"{rp}.matches[{m}].path.value",
                                              'must start with "/"'))
                    if match.headers or match.query_params:
                        out += _match_conditions(match, f"{rp}.matches[{m}]")
                out += filters.rule_errors(rule, rp, clusters)
    for i, c in enumerate(cfg.clusters):
        if c.unresolved and c.endpoints:
            out.append(FieldError(f"clusters[{i}].endpoints", "an unresolved cluster has none"))
        if c.protocol == "tcp" and c.limits is not None:
            # The TCP relay does not count against them yet: refused, never ignored.
            out.append(FieldError(f"clusters[{i}].limits", "not enforced on a tcp cluster (the "
                                  "TCP relay takes no cluster limits yet)"))
        out += cluster_lb_errors(c, f"clusters[{i}]")
        if c.tls is not None and c.tls.cert_file and not c.tls.key_file:
            out.append(FieldError(f"clusters[{i}].tls.key_file", "required with cert_file"))
        if c.tls is not None:
            out += tls_ref_errors(c.tls, f"clusters[{i}].tls", cfg)
        if c.outlier_detection is not None or c.health_check is not None:
            out += health.errors(c.outlier_detection, c.health_check, c.protocol,
                                 f"clusters[{i}]")
    out += key_material_errors(cfg)
    out += dns.errors(cfg)
    out += telemetry_checks.errors(cfg)
    out += log_checks(cfg.telemetry.access_log, cfg.telemetry.flow_log)
    return out
def _regex(pattern: str, path: str) -> list[FieldError]:
    why = regex.problem(pattern)
    return [] if why is None else [FieldError(path, f"regular expression refused: {why}")]


_CONSUMED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                       "proxy-connection", "te", "upgrade", "http2-settings", "expect"})
"""Request fields the codecs take out of the head (framing, hop-by-hop; `expect:
100-continue` over HTTP/1): a route match on one would never match, or match over one protocol
only (ADR 0021).  `host` is not here: it matches the authority (`routing.match`)."""


def _match_conditions(match: RouteMatch, p: str) -> list[FieldError]:
    """Header names are unique case-insensitively, query names exactly (Gateway API says a
    repeated name is ignored; the contract refuses it rather than drop a condition)."""
    out: list[FieldError] = []
    seen: set[str] = set()
    for j, h in enumerate(match.headers):
        if h.name.lower() in seen:
            out.append(FieldError(f"{p}.headers[{j}].name", f"duplicate header {h.name!r}"))
        elif h.name.lower() in _CONSUMED:
            out.append(FieldError(f"{p}.headers[{j}].name", f"{h.name!r} is a framing or "
                                  "hop-by-hop field: the proxy consumes it and it never "
                                  "reaches routing"))
        seen.add(h.name.lower())
        if h.type == "RegularExpression":
            out += _regex(h.value, f"{p}.headers[{j}].value")
    seen.clear()
    for j, q in enumerate(match.query_params):
        if q.name in seen:
            out.append(FieldError(f"{p}.query_params[{j}].name",
                                  f"duplicate query parameter {q.name!r}"))
        seen.add(q.name)
        if q.type == "RegularExpression":
            out += _regex(q.value, f"{p}.query_params[{j}].value")
    return out


def _network_filters(lst: Listener, p: str) -> list[FieldError]:
    """Network filters guard opaque TCP only: a listener that could hand a connection to an
    HTTP driver would let it bypass them, so it may not have any (never a silent gap)."""
    out: list[FieldError] = []
    if lst.protocol != "tcp":
        out.append(FieldError(f"{p}.network_filters", "only a listener with protocol `tcp` "
                              f"takes network filters (this one is {lst.protocol!r})"))
    for j, d in enumerate(lst.destinations):
        if d.protocol != "tcp":
            out.append(FieldError(f"{p}.destinations[{j}].protocol", "must be `tcp` on a "
                                  "listener with network filters"))
    for j, f in enumerate(lst.network_filters):
        out.extend(network.check(f, f"{p}.network_filters[{j}]"))
    return out


def check(cfg: ProxyConfig) -> None:
    """The semantic checks alone, for configs built from typed values (the compiler)."""
    errors = _semantic(cfg)
    if errors:
        raise ConfigError(errors)



def convert_error(exc: msgspec.ValidationError, prefix: str = "") -> FieldError:
    """msgspec's `... - at `$.a[0].b`` as a FieldError `a[0].b: ...` (below `prefix`)."""
    msg, _, where = str(exc).partition(" - at `$")
    where = where.rstrip("`")
    if prefix:
        return FieldError(prefix + where, msg)
    return FieldError(where.lstrip("."), msg)


def validate(raw: Any, *, optional: Collection[str] = (),
             ignored: list[str] | None = None) -> ProxyConfig:
    """Check `raw` (decoded YAML/JSON) and build the config, or raise ConfigError listing all
    errors.  `optional`/`ignored`: see `errors_in` (the push stream's optional fields)."""
    errors = errors_in(raw, ProxyConfig, optional=optional, ignored=ignored)
    if errors:
        raise ConfigError(errors)
    try:
        cfg = msgspec.convert(raw, ProxyConfig)
    except msgspec.ValidationError as exc:  # a case the walker does not model: still a field path
        raise ConfigError([convert_error(exc)]) from exc
    errors = _semantic(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


__all__ = ["ConfigError", "FieldError", "check", "convert_error", "errors_in", "schema_path",
           "validate"]
