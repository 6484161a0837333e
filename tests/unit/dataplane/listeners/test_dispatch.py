"""Forwarding headers and request ids, set in one place for every protocol."""

from __future__ import annotations

import uuid

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.listeners.dispatch import add_forwarding_headers, request_id, resolve
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", b"svc", b"http", list(headers))


def test_request_ids_are_valid_distinct_v4_uuids() -> None:
    ids = {request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in list(ids)[:50]:
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122


def test_headers_added_when_absent() -> None:
    h = head((b"accept", b"*/*"))
    add_forwarding_headers(h, b"10.0.0.1", True)
    d = dict(h.headers)
    assert d[b"x-forwarded-for"] == b"10.0.0.1"
    assert d[b"x-forwarded-proto"] == b"http"
    assert len(d[b"x-request-id"]) == 36


def test_existing_headers_are_kept_and_xff_appended() -> None:
    h = head((b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https"),
             (b"x-request-id", b"abc"))
    add_forwarding_headers(h, b"10.0.0.1", True)
    assert h.headers == [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.1"),
                         (b"x-forwarded-proto", b"https"), (b"x-request-id", b"abc")]


def test_a_clients_certificate_fields_are_the_proxys_to_set() -> None:
    # ADR 0096: removed as sent, wherever they are (xff's index is found again after), and
    # a verified peer's SPIFFE ID set.
    h = head((b"client-cert", b":Zm9v:"), (b"x-forwarded-for", b"1.2.3.4"),
             (b"x-forwarded-client-cert", b"URI=spiffe://td/ns/shop/sa/admin"),
             (b"client-cert-chain", b":Zm9v:"), (b"accept", b"*/*"))
    add_forwarding_headers(h, b"10.0.0.1", False, b"URI=spiffe://td/ns/shop/sa/a")
    assert h.headers == [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.1"), (b"accept", b"*/*"),
                         (b"x-forwarded-client-cert", b"URI=spiffe://td/ns/shop/sa/a"),
                         (b"x-forwarded-proto", b"http")]
    plain = head((b"x-forwarded-client-cert", b"URI=spiffe://td/ns/shop/sa/admin"))
    add_forwarding_headers(plain, b"", False)
    assert plain.headers == [(b"x-forwarded-proto", b"http")]


def test_request_id_generation_can_be_turned_off() -> None:
    h = head()
    add_forwarding_headers(h, b"", False)
    assert h.headers == [(b"x-forwarded-proto", b"http")]


def test_a_forked_worker_draws_a_new_prefix() -> None:
    import os

    parent = request_id()[:24]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its prefix and exit without running pytest's teardown
        os.write(w, request_id()[:24])
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64)
    os.close(r)
    os.close(w)
    assert child != parent


def _ctx(**paths: object) -> ListenerContext:
    from tulle.proxyconfig import validate

    cfg = validate({
        "listeners": [{"name": "l", "port": 0, "route_table": "rt"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"value": "/public"}}], "backends": [{"cluster": "a"}]},
            {"backends": [{"cluster": "b"}]}]}]}],
        "clusters": [{"name": "a"}, {"name": "b"}],
        "settings": {"path_normalization": paths},
    })
    routers = {"rt": Router(cfg.route_tables[0], 15000)}
    return ListenerContext(cfg.listeners[0], cfg.settings, routers, {}, ProxyMetrics())


def test_resolve_routes_and_forwards_the_normalised_path() -> None:
    ctx = _ctx()
    h = RequestHead(b"GET", b"/public/%2E%2e/admin?x=/..", b"svc", b"http", [])
    d = resolve(ctx, ctx.router, "", h)
    assert h.path == b"/admin?x=/.."  # what the upstream will be sent
    assert d.cluster_name == "b"  # the catch-all, not /public's cluster
    untouched = b"/public/x?y=%2e%2e"
    h = RequestHead(b"GET", untouched, b"svc", b"http", [])
    assert resolve(ctx, ctx.router, "", h).cluster_name == "a" and h.path is untouched


def test_resolve_refuses_an_unsafe_path_with_400_and_counts_it() -> None:
    ctx = _ctx()
    d = resolve(ctx, ctx.router, "", RequestHead(b"GET", b"/public/%00", b"svc", b"http", []))
    assert (d.status, d.flag, d.cluster) == (400, "DPE", None)
    assert b"NUL" in d.body
    assert ctx.metrics.protocol_errors.labels("l", "invalid_path").value == 1


def test_resolve_leaves_paths_alone_when_normalisation_is_off() -> None:
    ctx = _ctx(normalize=False)
    h = RequestHead(b"GET", b"/public/../admin", b"svc", b"http", [])
    assert resolve(ctx, ctx.router, "", h).cluster_name == "a"
    assert h.path == b"/public/../admin"


def test_a_route_to_an_unresolved_cluster_is_answered_500_for_that_share_only() -> None:
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.proxyconfig import validate

    cfg = validate({
        "listeners": [{"name": "l", "port": 0, "route_table": "rt"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "ok", "weight": 1}, {"cluster": "gone", "weight": 1}]}]}]}],
        "clusters": [{"name": "ok"}, {"name": "gone", "unresolved": True}],
    })
    metrics = ProxyMetrics()
    clusters = {c.name: ClusterRuntime(c, cfg.settings, metrics, [], {}) for c in cfg.clusters}
    ctx = ListenerContext(cfg.listeners[0], cfg.settings, {"rt": Router(cfg.route_tables[0],
                                                                        15000)},
                          clusters, metrics)
    seen = {}
    for _ in range(200):
        d = resolve(ctx, ctx.router, "", RequestHead(b"GET", b"/", b"svc", b"http", []))
        seen[d.cluster_name] = (d.status, d.flag, d.cluster is None)
    assert seen == {"ok": (0, "", False), "gone": (500, "UB", True)}


def test_an_unresolved_cluster_may_not_have_endpoints() -> None:
    import pytest

    from tulle.proxyconfig import validate
    from tulle.proxyconfig.validate import ConfigError

    with pytest.raises(ConfigError, match="an unresolved cluster has none"):
        validate({"clusters": [{"name": "gone", "unresolved": True,
                                "endpoints": [{"address": "127.0.0.1", "port": 1}]}]})


def test_requests_of_a_route_without_filters_share_the_decision_the_context_built() -> None:
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.proxyconfig import validate

    cfg = validate({
        "listeners": [{"name": "l", "port": 0, "route_table": "rt"},
                      {"name": "plain", "port": 0, "cluster": "b"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "b"}], "timeout_ms": 2500}]}]}],
        "clusters": [{"name": "b"}],
    })
    metrics = ProxyMetrics()
    clusters = {c.name: ClusterRuntime(c, cfg.settings, metrics, [], {}) for c in cfg.clusters}
    routers = {"rt": Router(cfg.route_tables[0], 15000)}
    ctx = ListenerContext(cfg.listeners[0], cfg.settings, routers, clusters, metrics)
    assert ctx.decisions == {}
    first = resolve(ctx, ctx.router, "", head())
    assert (first.cluster_name, first.timeout_ms) == ("b", 2500)
    assert ctx.decisions == {"b": {2500: first}}  # built once, by the context ...
    assert resolve(ctx, ctx.router, "", head()) is first  # ... then found by `resolve`
    # A listener without a route table: its cluster and the request timeout, shared likewise.
    plain = ListenerContext(cfg.listeners[1], cfg.settings, routers, clusters, metrics)
    d = resolve(plain, plain.router, plain.cluster, head())
    assert (d.cluster_name, d.timeout_ms) == ("b", cfg.settings.request_timeout_ms)
    assert resolve(plain, plain.router, plain.cluster, head()) is d
    assert plain.decisions == {"b": {cfg.settings.request_timeout_ms: d}}
