"""Config features: each names real fields of the model, and withholding removes exactly them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from msgspec import inspect as mi

from tulle.proxyconfig.delta import (
    ENDPOINTS,
    POSITIONS,
    VIRTUAL_HOSTS,
    WHOLE,
    apply_delta,
    diff,
)
from tulle.proxyconfig.features import (
    BY_NAME,
    FEATURES,
    SUPPORTED,
    lacking,
    refused_by,
    withheld_from,
    withhold_config,
    withhold_delta,
)
from tulle.proxyconfig.model import Listener, Overload, ProxyConfig, Settings
from tulle.proxyconfig.stream import decode_delta, decode_snapshot
from tulle.proxyconfig.validate import validate


def _field_type(t: mi.Type, segments: list[str]) -> mi.Type:
    for seg in segments:
        many = seg.endswith("[]")
        name = seg[:-2] if many else seg
        if isinstance(t, mi.UnionType):  # an optional struct (`tls: TLSContext | None`)
            options: Sequence[mi.Type] = [o for o in t.types
                                          if not isinstance(o, mi.NoneType)]
            if len(options) > 1:  # a tagged union (a filter): the member with that field
                options = [o for o in options if isinstance(o, mi.StructType)
                           and any(f.encode_name == name for f in o.fields)][:1]
            (t,) = options
        assert isinstance(t, mi.StructType), f"{seg}: not inside a struct"
        (f,) = [f for f in t.fields if f.encode_name == name] or [None]  # type: ignore[list-item]
        assert f is not None, f"no field {name!r}"
        t = f.type
        if many:
            assert isinstance(t, mi.ListType), f"{seg}: not a list"
            t = t.item_type
    return t


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_every_feature_path_names_a_field_of_the_model(feature: Any) -> None:
    for p in (*feature.paths, *((feature.drops,) if feature.drops else ()), *feature.refused_at):
        _field_type(mi.type_info(ProxyConfig), p.split("."))
    assert bool(feature.uses) == bool(feature.drops or feature.refused_at), feature.name


def test_names_are_unique_and_a_proxy_of_this_build_announces_them_all() -> None:
    assert len(BY_NAME) == len(FEATURES)
    assert set(SUPPORTED) == set(BY_NAME)
    assert lacking(SUPPORTED) == ()
    assert [f.name for f in lacking(["overload"])] == [
        "connection-limits", "path-normalization", "tcp-idle-timeout", "http2-limits",
        "tls-handshake-timeout", "http1-limits", "network-filters", "http-filters",
        "delta-virtual-hosts", "delta-endpoints", "delta-positions",
        "filter-chains", "tls-sections", "metadata", "route-matches", "multi-workload",
        "unresolved-backends", "cluster-limits", "mtls", "authorization",
        "network-authorization", "request-redirect", "backend-request-timeout",
        "request-mirror", "backend-filters", "url-rewrite", "ca-rotation", "load-balancing",
        "outlier-detection", "health-checks", "retries", "stream-idle-timeout", "dns",
        "delta-dns-hosts", "fault-injection", "rate-limit", "network-rate-limit",
        "stats-reports", "rate-limit-redis-auth", "tap", "golden-metrics",
        "delta-telemetry-peers", "telemetry", "tracing", "dns-clients", "access-log",
        "flow-logs", "addressed-service", "session-persistence", "dual-stack",
        "authz-trust-domains", "listener-sources", "stats-grpc-status",
        "refused-destinations", "drain-propagation", "serving-ack"]


def _cfg(version: str, max_conn: int) -> ProxyConfig:
    return ProxyConfig(
        version=version,
        settings=Settings(max_connections=max_conn,
                          overload=Overload(max_rss_bytes=max_conn * 1000)),
        listeners=[Listener(name="a", port=1, max_connections=max_conn),
                   Listener(name="b", port=2)])


def test_a_withheld_snapshot_has_none_of_the_fields_and_still_decodes() -> None:
    doc = msgspec.to_builtins(_cfg("v1", 7))
    withhold_config(doc, lacking(["path-normalization", "tcp-idle-timeout"]))
    assert "max_connections" not in doc["settings"] and "overload" not in doc["settings"]
    assert all("max_connections" not in x for x in doc["listeners"])
    assert "path_normalization" in doc["settings"]  # announced: kept
    got = decode_snapshot(msgspec.Raw(msgspec.json.encode(doc)))
    assert got.settings.max_connections == 0 and got.listeners[0].max_connections == 0


def test_a_withheld_delta_has_none_of_the_fields_in_singletons_or_upserts() -> None:
    old, new = _cfg("v1", 7), _cfg("v2", 9)
    doc = msgspec.to_builtins(diff(old, new))
    assert doc["listeners"]["upsert"][0]["max_connections"] == 9
    withhold_delta(doc, lacking([]))
    assert "max_connections" not in doc["listeners"]["upsert"][0]
    assert {"max_connections", "overload", "tcp_idle_timeout_ms",
            "path_normalization"}.isdisjoint(doc["settings"])
    base = decode_snapshot(msgspec.Raw(msgspec.json.encode(
        _withheld(msgspec.to_builtins(old)))))
    rebuilt = apply_delta(base, decode_delta(msgspec.Raw(msgspec.json.encode(doc))))
    assert rebuilt.version == "v2" and rebuilt.listeners[0].max_connections == 0


def _withheld(doc: dict[str, Any]) -> dict[str, Any]:
    withhold_config(doc, FEATURES)
    return doc


BASELINE = frozenset({
    "admin", "admin.address", "admin.port", "api_version", "clusters",
    "clusters[].connect_timeout_ms", "clusters[].endpoints", "clusters[].endpoints[].address",
    "clusters[].endpoints[].port", "clusters[].endpoints[].weight", "clusters[].endpoints[].zone",
    "clusters[].idle_timeout_ms", "clusters[].lb_policy", "clusters[].max_concurrent_streams",
    "clusters[].max_idle_per_endpoint", "clusters[].name", "clusters[].protocol", "clusters[].tls",
    "clusters[].tls.alpn", "clusters[].tls.ca_file", "clusters[].tls.cert_file",
    "clusters[].tls.key_file", "clusters[].tls.server_name", "listeners", "listeners[].address",
    "listeners[].cluster", "listeners[].destinations", "listeners[].destinations[].address",
    "listeners[].destinations[].cluster", "listeners[].destinations[].port",
    "listeners[].destinations[].protocol", "listeners[].destinations[].route_table",
    "listeners[].detect_timeout_ms", "listeners[].direction", "listeners[].mode",
    "listeners[].name", "listeners[].opaque_ports", "listeners[].passthrough", "listeners[].port",
    "listeners[].protocol", "listeners[].reuse_port", "listeners[].route_table", "listeners[].tls",
    "listeners[].tls.alpn", "listeners[].tls.ca_file", "listeners[].tls.cert_file",
    "listeners[].tls.key_file", "listeners[].tls.server_name", "node", "node.name",
    "node.namespace", "node.service", "route_tables", "route_tables[].name",
    "route_tables[].virtual_hosts", "route_tables[].virtual_hosts[].domains",
    "route_tables[].virtual_hosts[].name", "route_tables[].virtual_hosts[].rules",
    "route_tables[].virtual_hosts[].rules[].backends",
    "route_tables[].virtual_hosts[].rules[].backends[].cluster",
    "route_tables[].virtual_hosts[].rules[].backends[].weight",
    "route_tables[].virtual_hosts[].rules[].matches",
    "route_tables[].virtual_hosts[].rules[].matches[].path",
    "route_tables[].virtual_hosts[].rules[].matches[].path.type",
    "route_tables[].virtual_hosts[].rules[].matches[].path.value",
    "route_tables[].virtual_hosts[].rules[].name",
    "route_tables[].virtual_hosts[].rules[].timeout_ms", "settings",
    "settings.buffer_high_water_bytes", "settings.drain_timeout_ms",
    "settings.generate_request_id", "settings.header_timeout_ms", "settings.idle_timeout_ms",
    "settings.max_request_header_bytes", "settings.max_response_header_bytes",
    "settings.request_timeout_ms", "settings.workers", "version",
})
"""Every field of the contract when the push stream first shipped (commit dd36618): what a
proxy that announces no features decodes."""


def _schema_paths(t: mi.Type, prefix: str, out: set[str]) -> None:
    if isinstance(t, mi.UnionType):
        for o in t.types:
            _schema_paths(o, prefix, out)
    elif isinstance(t, mi.ListType):
        _schema_paths(t.item_type, prefix + "[]", out)
    elif isinstance(t, mi.StructType):
        for f in t.fields:
            p = f"{prefix}.{f.encode_name}" if prefix else f.encode_name
            out.add(p)
            _schema_paths(f.type, p, out)


def test_every_field_added_since_the_first_stream_release_belongs_to_a_feature() -> None:
    """A new field without a feature would be sent to proxies that cannot decode it: add a
    `Feature` for it in proxyconfig/features.py (and to the table in proxyconfig.md)."""
    paths: set[str] = set()
    _schema_paths(mi.type_info(ProxyConfig), "", paths)
    owned = [p for f in FEATURES for p in f.paths]
    orphans = sorted(p for p in paths - BASELINE
                     if not any(p == o or p.startswith((o + ".", o + "[")) for o in owned))
    assert orphans == []


def test_the_delta_units_are_features_and_their_payload_is_withheld_like_whole_resources() -> None:
    """A delta unit carries parts of resources: what a proxy lacks is stripped from them too."""
    assert {VIRTUAL_HOSTS, ENDPOINTS, POSITIONS} <= set(SUPPORTED)
    assert all(BY_NAME[u].paths == () for u in (VIRTUAL_HOSTS, ENDPOINTS, POSITIONS))

    def cfg(version: str, value: str, port: int) -> ProxyConfig:
        return validate({"version": version, "clusters": [
            {"name": "c", "endpoints": [{"address": "127.0.0.1", "port": port}]}],
            "route_tables": [{"name": "t", "virtual_hosts": [
                {"name": "h", "rules": [{"backends": [{"cluster": "c"}], "filters": [
                    {"type": "RequestHeaderModifier", "set": [{"name": "x", "value": value}]}]}]},
                {"name": "other"}]}]})

    old, new = cfg("v1", "a", 1), cfg("v2", "b", 2)
    doc = msgspec.to_builtins(diff(old, new))
    assert doc["virtual_hosts"][0]["upsert"][0]["rules"][0]["filters"]
    assert doc["endpoints"][0]["endpoints"] == [{"address": "127.0.0.1", "port": 2, "weight": 1,
                                                 "zone": "", "metadata": None}]
    withhold_delta(doc, lacking([f for f in SUPPORTED if f != "http-filters"]))
    assert "filters" not in doc["virtual_hosts"][0]["upsert"][0]["rules"][0]
    got = apply_delta(old, decode_delta(msgspec.Raw(msgspec.json.encode(doc))))
    assert got.route_tables[0].virtual_hosts[0].rules[0].filters == []
    assert got.route_tables[0].virtual_hosts[1] is old.route_tables[0].virtual_hosts[1]
    assert got.clusters[0].endpoints[0].port == 2
def _routes(*matches: dict[str, Any]) -> ProxyConfig:
    return msgspec.convert({
        "version": "v1", "clusters": [{"name": "web"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "h", "rules": [
            {"name": "canary", "matches": list(matches), "backends": [{"cluster": "web"}]},
            {"name": "default", "backends": [{"cluster": "web"}]}]}]}]}, ProxyConfig)


def test_withholding_route_matches_drops_the_matches_that_use_them_never_the_condition() -> None:
    """Stripping `headers` off a canary match would send every request to the canary; the
    match goes instead, and a rule left with none selects nothing."""
    cfg = _routes({"path": {"value": "/a"}, "headers": [{"name": "x-canary", "value": "1"}]},
                  {"path": {"value": "/b"}},
                  {"path": {"type": "RegularExpression", "value": "/c.*"}},
                  {"method": "GET"}, {"query_params": [{"name": "q", "value": "1"}]})
    doc = msgspec.to_builtins(cfg)
    withhold_config(doc, [BY_NAME["route-matches"]])
    rules = doc["route_tables"][0]["virtual_hosts"][0]["rules"]
    assert rules[0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/b"}}]
    assert "matches" in rules[1]  # the default match needs nothing: kept
    only_header = msgspec.to_builtins(_routes({"headers": [{"name": "x", "value": "1"}]}))
    withhold_config(only_header, [BY_NAME["route-matches"]])
    got = decode_snapshot(msgspec.Raw(msgspec.json.encode(only_header)))
    assert got.route_tables[0].virtual_hosts[0].rules[0].matches == []


def test_withholding_route_matches_from_a_delta_drops_them_in_upserted_tables() -> None:
    old = _routes({"path": {"value": "/b"}})
    new = _routes({"path": {"value": "/b"}}, {"method": "POST"})
    doc = msgspec.to_builtins(diff(old, new, WHOLE))  # a proxy without the delta units
    withhold_delta(doc, lacking([f.name for f in FEATURES if f.name != "route-matches"]))
    (table,) = doc["route_tables"]["upsert"]
    assert table["virtual_hosts"][0]["rules"][0]["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/b"}}]


def test_withholding_route_matches_reaches_virtual_hosts_sent_as_delta_units() -> None:
    """A table changed only in a virtual host travels as a `virtual_hosts` unit: the matches
    a proxy cannot take are dropped there too, never sent (a NACK) nor stripped to a wider one."""
    old = _routes({"path": {"value": "/b"}})
    new = _routes({"path": {"value": "/b"}}, {"method": "POST"})
    doc = msgspec.to_builtins(diff(old, new))
    assert not doc["route_tables"].get("upsert") and doc["virtual_hosts"]
    withhold_delta(doc, lacking([f.name for f in FEATURES if f.name != "route-matches"]))
    (vhost,) = doc["virtual_hosts"][0]["upsert"]
    assert vhost["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/b"}}]
def test_cluster_limits_are_withheld_from_a_proxy_without_the_feature() -> None:
    from tulle.proxyconfig.model import Cluster, ClusterLimits

    cfg = ProxyConfig(version="v1", clusters=[Cluster(name="c",
                                                      limits=ClusterLimits(max_requests=5))])
    doc = msgspec.to_builtins(cfg)
    withhold_config(doc, lacking([f for f in SUPPORTED if f != "cluster-limits"]))
    assert "limits" not in doc["clusters"][0]
    got = decode_snapshot(msgspec.Raw(msgspec.json.encode(doc)))
    assert got.clusters[0].limits is None  # the proxy runs Envoy's defaults


def test_a_proxy_without_authorization_loses_the_rule_never_just_its_filter() -> None:
    """Stripping the filter (or all `filters`, for a proxy without `http-filters` either) would
    admit everything the policies refuse: the rule goes whole and its requests get 404."""
    doc = msgspec.to_builtins(msgspec.convert({
        "version": "v1", "clusters": [{"name": "web"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "h", "rules": [
            {"name": "guarded", "backends": [{"cluster": "web"}], "filters": [
                {"type": "Authorization", "policies": [{"name": "ns/deny-all"}]}]},
            {"name": "open", "backends": [{"cluster": "web"}]}]}]}]}, ProxyConfig))
    withhold_config(doc, [BY_NAME["http-filters"], BY_NAME["authorization"]])
    rules = doc["route_tables"][0]["virtual_hosts"][0]["rules"]
    assert [r["name"] for r in rules] == ["open"]
    assert decode_snapshot(msgspec.Raw(msgspec.json.encode(doc))).route_tables
def _filtered_table() -> ProxyConfig:
    from tulle.proxyconfig.filters import RequestHeaderModifier, RequestRedirect, URLRewrite
    from tulle.proxyconfig.filters.headers import HTTPHeader
    from tulle.proxyconfig.model import BackendRef, RouteRule, RouteTable, VirtualHost

    rule = RouteRule(backends=[BackendRef(cluster="c")], filters=[
        RequestRedirect(status_code=301), URLRewrite(hostname="b"),
        RequestHeaderModifier(set=[HTTPHeader(name="x", value="1")])])
    return ProxyConfig(version="v1", route_tables=[RouteTable(name="t", virtual_hosts=[
        VirtualHost(name="h", rules=[rule])])])


def test_filter_types_added_later_are_withheld_entry_by_entry() -> None:
    doc = msgspec.to_builtins(_filtered_table())
    withhold_config(doc, lacking([f for f in SUPPORTED if f != "request-redirect"]))
    kinds = [f["type"] for f in doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]["filters"]]
    assert kinds == ["URLRewrite", "RequestHeaderModifier"]
    doc = msgspec.to_builtins(_filtered_table())
    withhold_config(doc, lacking([f for f in SUPPORTED if f not in ("request-redirect",
                                                                    "url-rewrite")]))
    got = decode_snapshot(msgspec.Raw(msgspec.json.encode(doc)))
    # A rewrite changes what the upstream is sent: without it the rule goes whole.
    assert got.route_tables[0].virtual_hosts[0].rules == []


def test_a_proxy_without_redis_auth_never_gets_a_limit_that_needs_it() -> None:
    """`rate-limit-redis-auth` withheld: the RateLimit entry that uses AUTH/TLS is removed (the
    rule serves unlimited, listed as withheld: never a limit that talks to Redis without its
    password), an entry without them is kept and its new fields (at defaults) stripped."""
    def limit(**extra: Any) -> dict[str, Any]:
        return {"type": "RateLimit", "global": {"requests": 5, "interval_ms": 1000,
                                                "redis": "r:6379", "key": "k", **extra}}

    doc: dict[str, Any] = {"route_tables": [{"name": "t", "virtual_hosts": [{"name": "h", "rules": [
        {"name": "auth", "filters": [limit(password_file="/p", tls={"ca_file": "/c"})]},
        {"name": "plain", "filters": [limit(username="", password_file="", tls=None)]}]}]}]}
    withhold_config(doc, [BY_NAME["rate-limit-redis-auth"]])
    rules = doc["route_tables"][0]["virtual_hosts"][0]["rules"]
    assert rules[0]["filters"] == []
    assert rules[1]["filters"][0]["global"] == {"requests": 5, "interval_ms": 1000,
                                                "redis": "r:6379", "key": "k"}


def test_a_proxy_without_session_persistence_serves_the_rule_balanced() -> None:
    """`session-persistence` withheld: the entry alone goes (the rule still serves, balanced
    as usual, the feature listed as withheld); the rule's other filters stay."""
    doc: dict[str, Any] = {"route_tables": [{"name": "t", "virtual_hosts": [{"name": "h", "rules": [
        {"name": "cart", "backends": [{"cluster": "c"}], "filters": [
            {"type": "RequestHeaderModifier", "set": [{"name": "x-a", "value": "1"}]},
            {"type": "SessionPersistence", "name": "sid"}]}]}]}]}
    withhold_config(doc, [BY_NAME["session-persistence"]])
    (rule,) = doc["route_tables"][0]["virtual_hosts"][0]["rules"]
    assert [f["type"] for f in rule["filters"]] == ["RequestHeaderModifier"]
    assert rule["backends"] == [{"cluster": "c"}]


def _refusing() -> ProxyConfig:
    return validate({"listeners": [{
        "name": "out", "port": 15001, "mode": "transparent", "passthrough": True,
        "destinations": [{"address": "10.232.0.4", "port": 8080, "cluster": "api"},
                         {"address": "10.232.0.4", "refuse": True}]}],
        "clusters": [{"name": "api", "endpoints": [{"address": "10.232.0.4", "port": 8080}]}]})


def test_a_proxy_without_refused_destinations_loses_them_whole_never_just_the_flag() -> None:
    """ADR 0114: a destination stripped of `refuse` alone names no route table or cluster,
    which an older proxy refuses (NACK for the whole snapshot); the refusing destination is
    dropped whole instead, so that proxy passes the call through as before and its status
    lists the feature as withheld.  The other destinations are kept as they were."""
    missing = [BY_NAME["refused-destinations"]]
    doc = msgspec.to_builtins(_refusing())
    withhold_config(doc, missing)
    assert [(d["address"], d["port"]) for d in doc["listeners"][0]["destinations"]] == [
        ("10.232.0.4", 8080)]
    assert "refuse" not in doc["listeners"][0]["destinations"][0]
    assert decode_snapshot(msgspec.Raw(msgspec.json.encode(doc))).listeners[0].destinations[
        0].cluster == "api"
    delta = msgspec.to_builtins(diff(ProxyConfig(version="v0"), _refusing()))
    withhold_delta(delta, missing)
    assert [list(d) for d in delta["listeners"]["upsert"][0]["destinations"]] == [
        ["address", "port", "protocol", "route_table", "cluster"]]


def test_a_proxy_is_withheld_each_lacking_feature_that_owns_fields_or_drops_items() -> None:
    """The control plane's list for one proxy (ADR 0122): a feature with only `drops` (a
    filter type added later) counts as much as one with fields, else its entries go to a
    build whose decoder refuses them; capabilities and delta units have nothing to withhold."""
    for f in FEATURES:
        missing = withheld_from([g for g in SUPPORTED if g != f.name])
        assert missing == ((f,) if f.paths or f.drops else ()), f.name
    names = {f.name for f in withheld_from([])}
    assert {"authorization", "session-persistence", "rate-limit", "url-rewrite"} <= names
    assert not names & {"tap", "serving-ack", "network-authorization", "stats-reports"}


def test_a_feature_never_withheld_is_one_a_proxy_lacking_it_refuses() -> None:
    """`network-authorization` and `network-rate-limit` go to a proxy lacking them, which
    refuses the snapshot; apply says so beforehand (ADR 0125)."""
    assert [f.name for f in refused_by([])] == ["network-authorization", "network-rate-limit"]
    assert refused_by(SUPPORTED) == ()
    assert not set(refused_by([])) & set(withheld_from([]))
