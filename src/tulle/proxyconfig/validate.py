"""Validate a raw proxy configuration and report *every* problem with its field path.

msgspec stops at the first error; an operator fixing a file wants all of them at once.  So
validation walks the raw document against the model's type information (structure, types,
bounds, unknown fields), then checks what types cannot express (cross references, unique names,
addresses).  Only a document with no errors is converted into a `ProxyConfig`.

Error form: `listeners[0].port: must be <= 65535` (the path is dotted, list indices in
brackets), the same form the control plane uses for user resources.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from typing import Any

import msgspec
from msgspec import inspect as mi

from tulle.errors import FieldError
from tulle.proxyconfig import dns, filters, health, network, regex
from tulle.proxyconfig.lb_checks import cluster_lb_errors
from tulle.proxyconfig.model import (
    FilterChain,
    FilterChainMatch,
    Listener,
    ProxyConfig,
    RouteMatch,
    TLSContext,
)


class ConfigError(ValueError):
    """A configuration was rejected; `errors` lists every reason with its field path."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_TYPE_NAMES = {
    mi.IntType: "an integer",
    mi.StrType: "a string",
    mi.BoolType: "a boolean",
    mi.FloatType: "a number",
    mi.ListType: "a list",
    mi.DictType: "a mapping",
    mi.StructType: "a mapping",
    mi.NoneType: "null",
}


def _check_tagged(value: dict[str, Any], options: list[mi.StructType], path: str,
                  out: list[FieldError], w: _Walk) -> None:
    """A tagged union: the tag names the struct, whose errors are reported with their paths."""
    field = options[0].tag_field
    assert field is not None
    tags = {o.tag: o for o in options}
    allowed = ", ".join(repr(k) for k in tags)
    if field not in value:
        out.append(FieldError(_join(path, field), f"required field is missing (one of {allowed})"))
        return
    option = tags.get(value[field])
    if option is None:
        out.append(FieldError(_join(path, field), f"must be one of {allowed}, "
                                                  f"got {value[field]!r}"))
        return
    _check(value, option, path, out, w)


def _describe(t: mi.Type) -> str:
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in t.values)
    if isinstance(t, mi.StructType) and t.tag_field:
        return f"a mapping with {t.tag_field}: {t.tag!r}"
    return _TYPE_NAMES.get(type(t), type(t).__name__)


class _Walk:
    """What one walk carries besides the errors: the schema paths whose unknown fields may be
    dropped (marked optional by the sender) and the concrete paths that were dropped."""

    __slots__ = ("ignored", "optional")

    def __init__(self, optional: Collection[str] = ()) -> None:
        self.optional = frozenset(optional)
        self.ignored: list[str] = []


_INDEX = re.compile(r"\[[^\]]*\]")


def schema_path(path: str) -> str:
    """`listeners[3].port` and `listeners[name=web].port` -> `listeners[].port`: the form
    feature and optional-field paths are written in."""
    return _INDEX.sub("[]", path)


def _tagged(t: mi.UnionType) -> list[mi.StructType] | None:
    """The options of a tagged union of structs (msgspec's `tag_field`), else None."""
    real = [o for o in t.types if not isinstance(o, mi.NoneType)]
    if len(real) < 2 or not all(isinstance(o, mi.StructType) and o.tag_field for o in real):
        return None
    return real  # type: ignore[return-value]


def _check(value: Any, t: mi.Type, path: str, out: list[FieldError], w: _Walk) -> None:
    if isinstance(t, mi.AnyType):
        return
    if isinstance(t, mi.UnionType):
        tagged = _tagged(t)
        if tagged is not None and isinstance(value, dict):
            _check_tagged(value, tagged, path, out, w)  # the tag decides; no guessing
            return
        for option in t.types:
            trial: list[FieldError] = []
            tw = _Walk(w.optional)
            _check(value, option, path, trial, tw)
            if not trial:
                w.ignored += tw.ignored
                return
        # Prefer the errors of the non-null option so the message is about the real shape.
        real = [o for o in t.types if not isinstance(o, mi.NoneType)]
        if len(real) == 1:
            _check(value, real[0], path, out, w)
        else:
            out.append(FieldError(path, "expected " + " or ".join(_describe(o) for o in t.types)))
        return
    if isinstance(t, mi.NoneType):
        if value is not None:
            out.append(FieldError(path, "expected null"))
        return
    if isinstance(t, mi.LiteralType):
        if value not in t.values:
            allowed = ", ".join(repr(v) for v in t.values)
            out.append(FieldError(path, f"must be one of {allowed}, got {value!r}"))
        return
    if isinstance(t, mi.BoolType):
        if not isinstance(value, bool):
            out.append(FieldError(path, f"expected a boolean, got {type(value).__name__}"))
        return
    if isinstance(t, mi.IntType):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(FieldError(path, f"expected an integer, got {type(value).__name__}"))
            return
        if t.ge is not None and value < t.ge:
            out.append(FieldError(path, f"must be >= {t.ge}, got {value}"))
        if t.le is not None and value > t.le:
            out.append(FieldError(path, f"must be <= {t.le}, got {value}"))
        return
    if isinstance(t, mi.StrType):
        if not isinstance(value, str):
            out.append(FieldError(path, f"expected a string, got {type(value).__name__}"))
            return
        if t.min_length is not None and len(value) < t.min_length:
            out.append(FieldError(path, f"must be at least {t.min_length} characters"))
        if t.max_length is not None and len(value) > t.max_length:
            out.append(FieldError(path, f"must be at most {t.max_length} characters"))
        if t.pattern is not None and not re.search(t.pattern, value):
            out.append(FieldError(path, f"must match {t.pattern}, got {value!r}"))
        return
    if isinstance(t, mi.ListType):
        if not isinstance(value, list):
            out.append(FieldError(path, f"expected a list, got {type(value).__name__}"))
            return
        if t.max_length is not None and len(value) > t.max_length:
            out.append(FieldError(path, f"must have at most {t.max_length} items"))
        for i, item in enumerate(value):
            _check(item, t.item_type, _join(path, i), out, w)
        return
    if isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            out.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
            return
        for k, v in value.items():
            _check(v, t.value_type, _join(path, str(k)), out, w)
        return
    if isinstance(t, mi.StructType):
        if not isinstance(value, dict):
            out.append(FieldError(path, f"expected a mapping, got {type(value).__name__}"))
            return
        if t.tag_field and t.tag_field in value and value[t.tag_field] != t.tag:
            out.append(FieldError(_join(path, t.tag_field), f"must be {t.tag!r}"))
        known = {f.encode_name: f for f in t.fields}
        unknown = [k for k in value if k not in known and k != t.tag_field]
        if unknown and t.forbid_unknown_fields:
            for key in unknown:
                where = _join(path, str(key))
                if w.optional and schema_path(where) in w.optional:
                    del value[key]  # the sender said an older proxy may go without it
                    w.ignored.append(where)
                else:
                    out.append(FieldError(where, "unknown field"))
        for f in t.fields:
            if f.encode_name in value:
                _check(value[f.encode_name], f.type, _join(path, f.encode_name), out, w)
            elif f.required:
                out.append(FieldError(_join(path, f.encode_name), "required field is missing"))
        return
    out.append(FieldError(path, f"unsupported type {type(t).__name__}"))  # pragma: no cover


_SCHEMA: mi.Type = mi.type_info(ProxyConfig)


def _duplicates(names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for n in names:
        (dup if n in seen else seen).add(n)
    return dup


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
    bound: dict[tuple[str, int], int] = {}
    for i, lst in enumerate(cfg.listeners):
        p = f"listeners[{i}]"
        if not _is_ip(lst.address):
            out.append(FieldError(f"{p}.address", f"must be an IP address, got {lst.address!r}"))
        if lst.port:
            other = bound.setdefault((lst.address, lst.port), i)
            if other != i and not lst.reuse_port:
                out.append(FieldError(f"{p}.port", f"{lst.address}:{lst.port} is already "
                                      f"used by listeners[{other}]"))
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
            out += _tls_refs(lst.tls, f"{p}.tls", cfg, server=True)
        if lst.filter_chains:
            out += _chains(lst, p, cfg, tables, clusters)
        if lst.network_filters:
            out.extend(_network_filters(lst, p))
        for j, d in enumerate(lst.destinations):
            dp = f"{p}.destinations[{j}]"
            if d.address:
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
            if not (d.route_table or d.cluster):
                out.append(FieldError(dp, "a destination needs a route_table or a cluster"))
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
            out += _tls_refs(c.tls, f"clusters[{i}].tls", cfg)
        if c.outlier_detection is not None or c.health_check is not None:
            out += health.errors(c.outlier_detection, c.health_check, c.protocol,
                                 f"clusters[{i}]")
    out += _sections(cfg)
    out += dns.errors(cfg)
    return out


_SPIFFE_ID = re.compile(r"^spiffe://[a-z0-9._-]{1,255}(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$")
"""A SPIFFE ID: lower-case trust domain, then path segments (SPIFFE ID spec, section 2)."""


def _tls_refs(tls: TLSContext, p: str, cfg: ProxyConfig,
              server: bool = False) -> list[FieldError]:
    """References to the snapshot's identity and trust-bundle sections resolve, and a setting
    comes from a section or from files, not both; expected SPIFFE IDs are well formed, on the
    upstream side only, and come with trust anchors to verify the server against."""
    out: list[FieldError] = []
    if tls.expected_spiffe_ids:
        if server:
            out.append(FieldError(f"{p}.expected_spiffe_ids", "upstream (cluster) TLS only: a "
                                  "listener learns the client's identity, authorization "
                                  "decides on it"))
        elif not (tls.trust_bundle or tls.ca_file):
            out.append(FieldError(f"{p}.expected_spiffe_ids", "needs a trust_bundle or ca_file "
                                  "to verify the server's certificate against"))
        for k, sid in enumerate(tls.expected_spiffe_ids):
            if len(sid) > 2048 or not _SPIFFE_ID.match(sid):
                out.append(FieldError(f"{p}.expected_spiffe_ids[{k}]", "must be a SPIFFE ID "
                                      f"(spiffe://<trust-domain>/<path>), got {sid[:80]!r}"))
    if tls.identity:
        if not any(i.name == tls.identity for i in cfg.identities):
            out.append(FieldError(f"{p}.identity", f"no identity named {tls.identity!r}"))
        if tls.cert_file or tls.key_file:
            out.append(FieldError(f"{p}.identity", "not together with cert_file / key_file"))
    if tls.trust_bundle:
        if not any(b.name == tls.trust_bundle for b in cfg.trust_bundles):
            out.append(FieldError(f"{p}.trust_bundle",
                                  f"no trust bundle named {tls.trust_bundle!r}"))
        if tls.ca_file:
            out.append(FieldError(f"{p}.trust_bundle", "not together with ca_file"))
    return out


def _sections(cfg: ProxyConfig) -> list[FieldError]:
    """The shape of the key material (never quoted back: it may be a private key)."""
    out: list[FieldError] = []
    for i, ident in enumerate(cfg.identities):
        p = f"identities[{i}]"
        if "-----BEGIN CERTIFICATE-----" not in ident.cert_chain_pem:
            out.append(FieldError(f"{p}.cert_chain_pem", "must hold a PEM certificate"))
        if _KEY_BLOCK.search(ident.cert_chain_pem):
            out.append(FieldError(f"{p}.cert_chain_pem", f"{_NOT_PUBLIC}: put the key in "
                                  "private_key_pem"))
        if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", ident.private_key_pem):
            out.append(FieldError(f"{p}.private_key_pem", "must hold a PEM private key"))
        if "ENCRYPTED" in ident.private_key_pem:
            out.append(FieldError(f"{p}.private_key_pem", "must not be encrypted"))
    for i, b in enumerate(cfg.trust_bundles):
        if not b.ca_pems:
            out.append(FieldError(f"trust_bundles[{i}].ca_pems", "at least one CA is required"))
        for j, pem in enumerate(b.ca_pems):
            if "-----BEGIN CERTIFICATE-----" not in pem:
                out.append(FieldError(f"trust_bundles[{i}].ca_pems[{j}]",
                                      "must hold a PEM certificate"))
            if _KEY_BLOCK.search(pem):
                out.append(FieldError(f"trust_bundles[{i}].ca_pems[{j}]", _NOT_PUBLIC))
    return out


_KEY_BLOCK = re.compile(r"PRIVATE KEY-----")
"""A PEM block holding a private key (any algorithm, OpenSSH's too), pasted into a field whose
content is public: certificates and CAs are shown in full by /config_dump (ADR 0021)."""
_NOT_PUBLIC = "must not hold a private key (it would be shown as public material)"


_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_SERVER_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def _chains(lst: Listener, p: str, cfg: ProxyConfig, tables: set[str],
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
            out += _tls_refs(fc.tls, f"{cp}.tls", cfg, server=True)
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
            nets.add(str(ipaddress.ip_network(a, strict=False)))
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


def errors_in(raw: Any, typ: Any, path: str = "", *, optional: Collection[str] = (),
              ignored: list[str] | None = None) -> list[FieldError]:
    """The structural errors of `raw` read as `typ` (any msgspec type of the contract), each
    with its path below `path`.  Unknown fields at a schema path in `optional` are removed
    from `raw` (it is changed in place) and their paths appended to `ignored`."""
    w = _Walk(optional)
    errors: list[FieldError] = []
    _check(raw, _SCHEMA if typ is ProxyConfig else mi.type_info(typ), path, errors, w)
    if ignored is not None:
        ignored.extend(w.ignored)
    return errors


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
