"""The golden metrics' labels and bounds, from a contract and a scripted request record."""

from __future__ import annotations

from typing import Any

import msgspec
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.http.port import StreamConn
from tulle.dataplane.http.stream import RequestStream
from tulle.dataplane.telemetry.golden import HTTP_LABELS, TCP_LABELS, Golden, build_golden
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.model import ProxyConfig


def _convert(raw: dict[str, Any]) -> ProxyConfig:
    return msgspec.convert(raw, ProxyConfig)  # (the labels need no certificates)


CALLER = "spiffe://mesh.local/ns/shop/sa/web"
STRANGER = "spiffe://mesh.local/ns/other/sa/bot"
SERVER = "spiffe://mesh.local/ns/shop/sa/api"


def _cfg(**metrics: Any) -> dict[str, Any]:
    return {
        "node": {"name": "api-7f9", "namespace": "shop", "service": "api"},
        "telemetry": {"metrics": {"workload": "api-v1", "app": "api", "version": "v1",
                                  "principal": SERVER, "cluster": "c1",
                                  "peers": [{"principal": CALLER, "workload": "web-v2",
                                             "app": "web", "version": "v2"}], **metrics}},
        "listeners": [{"name": "in", "port": 0, "direction": "inbound", "cluster": "app"},
                      {"name": "out", "port": 0, "cluster": "db"}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 1}]},
                     {"name": "db", "metadata": {"service": "db", "namespace": "data",
                                                 "workload": "db-0",
                                                 "labels": {"app": "db", "version": "13"}},
                      "tls": {"expected_spiffe_ids": ["spiffe://mesh.local/ns/data/sa/db"]},
                      "endpoints": [{"address": "127.0.0.1", "port": 2}]},
                     {"name": "bare", "endpoints": [{"address": "127.0.0.1", "port": 3}]}],
    }


def _golden(metrics: ProxyMetrics | None = None, **kw: Any) -> tuple[Golden, ProxyMetrics, Any]:
    m = metrics or ProxyMetrics()
    cfg = _convert(_cfg(**kw))
    g = build_golden(m, cfg, None)
    assert g is not None
    return g, m, cfg


def _stream(identity: str = "", status: int = 200, *, grpc: bool = False,
            grpc_status: str = "", bytes_in: int = 0, bytes_out: int = 0,
            flags: str = "") -> Any:
    """A real `RequestStream` (compiled, `HttpGolden.count` takes nothing else) on a stand-in
    connection that has only what the golden metrics read."""
    headers = [(b"content-type", b"application/grpc")] if grpc else []
    conn = StreamConn()
    conn.facts = ConnectionFacts("l", "inbound")
    conn.facts.peer_identity = identity
    head = RequestHead(b"GET", b"/", b"web", b"http", headers, version=b"2" if grpc else b"1.1")
    s = RequestStream(conn, head, True, 0.0)
    s.status, s.grpc_status, s.flags = status, grpc_status, flags
    s.bytes_in, s.bytes_out = bytes_in, bytes_out
    return s


def _series(m: ProxyMetrics, name: str) -> list[dict[str, str]]:
    fam = m.golden.requests if name == "requests" else getattr(m.golden, name)  # type: ignore[attr-defined]
    return [dict(zip(fam.labelnames, k, strict=True)) for k in fam.children]


def test_inbound_labels_name_the_verified_caller_and_the_local_workload() -> None:
    g, m, cfg = _golden()
    rec = g.http(cfg.listeners[0], cfg.clusters[0])
    rec.count(_stream(CALLER, 200, bytes_in=10, bytes_out=2000), 3.0)
    rec.count(_stream(CALLER, 503), 1.0)
    rec.count(_stream(STRANGER, 200), 1.0)
    rec.count(_stream("", 200), 1.0)
    rows = {(r["source_principal"], r["response_code"]): r for r in _series(m, "requests")}
    ok = rows[(CALLER, "200")]
    assert ok["reporter"] == "destination"
    assert (ok["source_workload"], ok["source_app"], ok["source_version"]) == ("web-v2", "web", "v2")
    assert ok["source_workload_namespace"] == "shop"  # from the SPIFFE ID
    assert ok["source_canonical_service"] == "web" and ok["source_canonical_revision"] == "v2"
    assert ok["destination_workload"] == "api-v1"
    assert ok["destination_principal"] == SERVER
    assert ok["destination_service"] == "api.shop.svc.cluster.local"
    assert ok["destination_service_name"] == "api"
    assert ok["destination_service_namespace"] == "shop"
    assert ok["destination_cluster"] == "c1" and ok["source_cluster"] == "c1"
    assert ok["connection_security_policy"] == "mutual_tls"
    assert ok["request_protocol"] == "http" and ok["grpc_response_status"] == "-"
    stranger = rows[(STRANGER, "200")]
    assert stranger["source_workload"] == "unknown"
    assert stranger["source_workload_namespace"] == "other"
    plain = rows[("unknown", "200")]
    assert plain["connection_security_policy"] == "none"
    assert plain["source_workload"] == "unknown"
    assert set(rows) == {(CALLER, "200"), (CALLER, "503"), (STRANGER, "200"), ("unknown", "200")}
    text = m.registry.render(openmetrics=True)
    assert 'istio_request_bytes_bucket{' in text
    fams = {f.name: f for f in om_parse(text)}
    sizes = [s for s in fams["istio_response_bytes"].samples
             if s.name.endswith("_sum") and s.labels["source_principal"] == CALLER
             and s.labels["response_code"] == "200"]
    assert [s.value for s in sizes] == [2000]


def test_outbound_labels_name_the_cluster_destination() -> None:
    g, m, cfg = _golden()
    g.http(cfg.listeners[1], cfg.clusters[1]).count(_stream(), 2.0)
    g.http(cfg.listeners[1], cfg.clusters[2]).count(_stream(status=404), 2.0)
    (db,) = [r for r in _series(m, "requests") if r["destination_service_name"] == "db"]
    assert db["reporter"] == "source"
    assert db["source_workload"] == "api-v1" and db["source_principal"] == SERVER
    assert db["source_workload_namespace"] == "shop"
    assert db["destination_service"] == "db.data.svc.cluster.local"
    assert db["destination_workload"] == "db-0"
    assert db["destination_workload_namespace"] == "data"
    assert db["destination_principal"] == "spiffe://mesh.local/ns/data/sa/db"
    assert (db["destination_app"], db["destination_version"]) == ("db", "13")
    assert db["connection_security_policy"] == "unknown"
    (bare,) = [r for r in _series(m, "requests") if r["response_code"] == "404"]
    assert bare["destination_service"] == "bare"  # no metadata: the cluster's name
    assert bare["destination_workload"] == "unknown"


def test_grpc_status_from_trailers_or_mapped_from_http() -> None:
    """A call without a grpc-status is never OK (ADR 0107): a 200 without one is INTERNAL
    (reset after its head, or no trailers), a caller that left is CANCELLED."""
    g, m, cfg = _golden()
    rec = g.http(cfg.listeners[0], cfg.clusters[0])
    rec.count(_stream(CALLER, 200, grpc=True, grpc_status="5"), 1.0)
    rec.count(_stream(CALLER, 200, grpc=True, grpc_status="0"), 1.0)
    rec.count(_stream(CALLER, 200, grpc=True), 1.0)
    rec.count(_stream(CALLER, 200, grpc=True, flags="DC"), 1.0)
    rec.count(_stream(CALLER, 0, grpc=True, flags="DI,DC"), 1.0)
    rec.count(_stream(CALLER, 503, grpc=True), 1.0)
    got = sorted((r["response_code"], r["grpc_response_status"])
                 for r in _series(m, "requests"))
    assert got == [("0", "1"), ("200", "0"), ("200", "1"), ("200", "13"), ("200", "5"),
                   ("503", "14")]


def test_series_are_bounded_per_family_with_an_overflow_series_and_a_count() -> None:
    g, m, cfg = _golden(max_series_per_family=3)
    rec = g.http(cfg.listeners[0], cfg.clusters[0])
    for i in range(50):  # 50 distinct callers: an attacker minting identities
        rec.count(_stream(f"spiffe://mesh.local/ns/x/sa/s{i}", 200), 1.0)
    fams = m.golden  # type: ignore[attr-defined]
    for fam in (fams.requests, fams.duration, fams.request_bytes, fams.response_bytes):
        assert len(fam.children) == 4  # three label sets and the overflow series
    over = [k for k in fams.requests.children if k[1] == "overflow"]
    assert len(over) == 1 and over[0][0] == "destination"
    assert set(over[0][1:]) == {"overflow"}
    assert fams.requests.children[over[0]].value == 47
    assert sum(c.value for c in fams.requests.children.values()) == 50
    assert fams.overflow.labels("istio_requests_total").value == 47
    assert len(rec._cache) <= 3  # an overflowed key is never cached


def test_the_by_status_path_counts_in_the_same_bounded_series() -> None:
    """Requests keyed by their status alone (no identity, no flags, not gRPC) take the int
    lookup; they count in the series the general key names, and within the same bound."""
    g, m, cfg = _golden(max_series_per_family=3)
    rec = g.http(cfg.listeners[1], cfg.clusters[1])  # outbound: no source identity
    for status in (200, 200, 503, 200, 404, 500, 501, 502, 200):
        rec.count(_stream("", status, bytes_out=10), 1.0)
    rec.count(_stream("", 200, flags="UF"), 1.0)  # the general path, its own series
    fams = m.golden  # type: ignore[attr-defined]
    codes = {k[fams.requests.labelnames.index("response_code")]: c.value
             for k, c in fams.requests.children.items()}
    assert codes["200"] == 4 and codes["503"] == 1 and codes["404"] == 1
    assert codes["overflow"] == 4  # 500, 501, 502 and the UF request: past the bound
    assert sorted(rec._plain) == [200, 404, 503]  # an overflowed status is never kept
    assert rec._plain[200] is rec._cache[("", 200, "", "", False)]
    sizes = [k for k in fams.response_bytes.children if k[1] != "overflow"]
    assert sum(fams.response_bytes.children[k].sum for k in sizes) == 60


def test_tcp_labels_and_counts() -> None:
    g, m, cfg = _golden()
    conn = g.tcp(cfg.listeners[0], cfg.clusters[0], CALLER)
    conn.opened()
    conn.closed(received=100, sent=7)
    fams = m.golden  # type: ignore[attr-defined]
    (key,) = fams.tcp_opened.children
    labels = dict(zip(TCP_LABELS, key, strict=True))
    assert labels["request_protocol"] == "tcp"
    assert labels["source_workload"] == "web-v2"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert fams.tcp_closed.children[key].value == 1
    assert fams.tcp_received.children[key].value == 100
    assert fams.tcp_sent.children[key].value == 7
    assert "response_code" not in TCP_LABELS and "response_code" in HTTP_LABELS


def test_a_snapshot_without_telemetry_metrics_has_none_and_unchanged_config_keeps_it() -> None:
    m = ProxyMetrics()
    raw = _cfg()
    del raw["telemetry"]
    assert build_golden(m, _convert(raw), None) is None
    cfg = _convert(_cfg())
    first = build_golden(m, cfg, None)
    assert build_golden(m, _convert(_cfg()), first) is first
    changed = build_golden(m, _convert(_cfg(cluster="c2")), first)
    assert changed is not first and changed is not None
    assert changed.families is first.families  # type: ignore[union-attr]


def test_response_flags_are_envoys_codes_from_the_shared_module() -> None:
    g, m, cfg = _golden()
    rec = g.http(cfg.listeners[1], cfg.clusters[1])
    rec.count(_stream(status=503, flags="URX,UF"), 1.0)  # raw order: Envoy's order out
    rec.count(_stream(status=503, flags="OL"), 1.0)  # Tulle's overload code is Envoy's OM
    rec.count(_stream(status=200), 1.0)
    got = sorted(r["response_flags"] for r in _series(m, "requests"))
    assert got == ["-", "OM", "UF,URX"]


def test_a_service_cluster_of_one_workload_names_it_from_its_endpoints() -> None:
    raw = _cfg()
    ep = {"workload": "cache-0", "namespace": "data", "labels": {"app": "cache", "version": "7"}}
    raw["clusters"].append({"name": "cache", "metadata": {"service": "cache", "namespace": "data"},
                            "endpoints": [{"address": "127.0.0.1", "port": 4, "metadata": ep},
                                          {"address": "127.0.0.2", "port": 4, "metadata": ep}]})
    raw["clusters"].append({"name": "mixed", "metadata": {"service": "mixed"}, "endpoints": [
        {"address": "127.0.0.1", "port": 5, "metadata": {"workload": "a"}},
        {"address": "127.0.0.1", "port": 6, "metadata": {"workload": "b"}}]})
    m = ProxyMetrics()
    cfg = _convert(raw)
    g = build_golden(m, cfg, None)
    assert g is not None
    labels = dict(zip(HTTP_LABELS[9:20], g.destination(cfg.clusters[3]), strict=True))
    assert labels["destination_workload"] == "cache-0"
    assert labels["destination_version"] == "7" and labels["destination_app"] == "cache"
    assert labels["destination_service"] == "cache.data.svc.cluster.local"
    mixed = dict(zip(HTTP_LABELS[9:20], g.destination(cfg.clusters[4]), strict=True))
    assert mixed["destination_workload"] == "unknown"
    assert mixed["destination_service_name"] == "mixed"


def test_hostile_label_values_are_escaped_in_both_formats() -> None:
    from prometheus_client.parser import text_string_to_metric_families as text_parse

    g, m, cfg = _golden()
    rec = g.http(cfg.listeners[0], cfg.clusters[0])
    evil = 'spiffe://mesh.local/ns/a"b\\c\nd/sa/x'  # a peer's identity is not ours to trust
    rec.count(_stream(evil, 200), 1.0)
    for parse, text in ((text_parse, m.registry.render()),
                        (om_parse, m.registry.render(openmetrics=True))):
        fams = {f.name: f for f in parse(text)}
        fam = fams.get("istio_requests") or fams["istio_requests_total"]
        (s,) = [s for s in fam.samples if s.labels.get("source_principal") == evil]
        assert s.labels["source_workload_namespace"] == 'a"b\\c\nd'
        assert s.value == 1


def test_a_node_agent_listener_names_the_workload_it_carries() -> None:
    raw = _cfg()
    raw["telemetry"]["metrics"]["peers"].append(
        {"principal": "spiffe://mesh.local/ns/shop/sa/pod-b", "workload": "pod-b",
         "namespace": "shop", "app": "b", "version": "v3"})
    raw["listeners"].append({"name": "b-in", "port": 0, "direction": "inbound",
                             "cluster": "app", "workload": "shop/pod-b"})
    raw["listeners"].append({"name": "b-out", "port": 0, "cluster": "db",
                             "workload": "shop/pod-b"})
    g, m, _ = _golden()
    cfg = _convert(raw)
    g = build_golden(m, cfg, None)
    assert g is not None
    g.http(cfg.listeners[2], cfg.clusters[0]).count(_stream(CALLER), 1.0)
    g.http(cfg.listeners[3], cfg.clusters[1]).count(_stream(), 1.0)
    rows = _series(m, "requests")
    (inbound,) = [r for r in rows if r["reporter"] == "destination"]
    assert inbound["destination_workload"] == "pod-b"
    assert inbound["destination_principal"] == "spiffe://mesh.local/ns/shop/sa/pod-b"
    assert inbound["destination_version"] == "v3"
    assert inbound["destination_service"] == "b.shop.svc.cluster.local"
    (outbound,) = [r for r in rows if r["reporter"] == "source"]
    assert outbound["source_workload"] == "pod-b" and outbound["source_app"] == "b"
    assert outbound["destination_service_name"] == "db"
