"""SSL contexts are built once per distinct TLS config and shared (issue 7, item 8): a thousand
mTLS clusters with the same settings cost one `SSLContext`, not a thousand."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from tests.support.certs import self_signed

from tulle.dataplane.runtime.build import SnapshotBuilder
from tulle.dataplane.runtime.tls import TLSContexts, build_client_context, build_server_context
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.tlsread import DirectSSLObject
from tulle.dataplane.upstream.cluster import ClusterManager
from tulle.proxyconfig import validate
from tulle.proxyconfig.model import Cluster, TLSContext


def tls_cluster(name: str, crt: str, key: str, **tls: Any) -> dict[str, Any]:
    return {"name": name, "endpoints": [{"address": "127.0.0.1", "port": 1000}],
            "tls": {"cert_file": crt, "key_file": key, "ca_file": crt, **tls}}


def config(clusters: list[dict[str, Any]], version: str = "v1") -> dict[str, Any]:
    return {"version": version, "clusters": clusters,
            "listeners": [{"name": "tcp", "port": 0, "protocol": "tcp",
                           "cluster": clusters[0]["name"]}]}


async def test_clusters_with_the_same_tls_config_share_one_context(tmp_path: Path) -> None:
    crt, key = self_signed(tmp_path)
    metrics = ProxyMetrics()
    tls = TLSContexts()
    b = SnapshotBuilder(metrics, ClusterManager(metrics, tls))
    clusters = [tls_cluster(f"c{i}", crt, key) for i in range(50)]
    clusters.append(tls_cluster("h2", crt, key, alpn=["h2"]))
    p = b.prepare(validate(config(clusters)))
    b.commit(p)
    rts = p.clusters.runtimes
    assert rts["c0"].ssl_context is not None
    assert all(rts[f"c{i}"].ssl_context is rts["c0"].ssl_context for i in range(50))
    assert rts["h2"].ssl_context is not rts["c0"].ssl_context  # another ALPN: another context
    assert tls.built == 2

    # A cluster whose settings change gets a new runtime, but the shared context.
    clusters[3] = {**clusters[3], "connect_timeout_ms": 50}
    p2 = b.prepare(validate(config(clusters, "v2")))
    b.commit(p2)
    assert p2.clusters.runtimes["c3"] is not rts["c3"]
    assert p2.clusters.runtimes["c3"].ssl_context is rts["c0"].ssl_context
    assert tls.built == 2


async def test_a_certificate_rewritten_on_disk_is_swapped_in_at_the_next_swap(
        tmp_path: Path) -> None:
    crt, key = self_signed(tmp_path)
    metrics = ProxyMetrics()
    tls = TLSContexts()
    b = SnapshotBuilder(metrics, ClusterManager(metrics, tls))
    clusters = [tls_cluster("a", crt, key), tls_cluster("b", crt, key)]
    p = b.prepare(validate(config(clusters)))
    b.commit(p)
    a, old = p.clusters.runtimes["a"], p.clusters.runtimes["a"].ssl_context

    self_signed(tmp_path)  # same paths, new files
    st = os.stat(crt)
    os.utime(crt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    p2 = b.prepare(validate(config(clusters, "v2")))
    assert a.ssl_context is old  # nothing in force changes before commit
    b.commit(p2)

    assert p2.clusters.runtimes["a"] is a  # same runtime (its pools), new context
    assert a.ssl_context is not old and a.ssl_context is not None
    assert p2.clusters.runtimes["b"].ssl_context is a.ssl_context
    assert tls.built == 2
    b.commit(b.prepare(validate(config(clusters, "v3"))))  # files unchanged: nothing rebuilt
    assert tls.built == 2 and len(tls) == 1


def test_an_unreadable_rotated_certificate_changes_nothing(tmp_path: Path) -> None:
    crt, key = self_signed(tmp_path)
    cache = TLSContexts()
    first = cache.client(Cluster(name="a", tls=TLSContext(cert_file=crt, key_file=key)))
    Path(crt).write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        cache.rotation()
    assert cache.client(Cluster(name="a", tls=TLSContext(cert_file=crt, key_file=key))) is first


def test_server_contexts_are_shared_and_an_unreadable_file_caches_nothing(tmp_path: Path) -> None:
    crt, key = self_signed(tmp_path)
    cache = TLSContexts()
    tls = TLSContext(cert_file=crt, key_file=key)
    assert cache.server(tls) is cache.server(TLSContext(cert_file=crt, key_file=key))
    with pytest.raises(OSError):
        cache.server(TLSContext(cert_file=str(tmp_path / "missing.crt"), key_file=key))
    assert len(cache) == 1 and cache.built == 1


def test_a_plaintext_cluster_has_no_context() -> None:
    assert TLSContexts().client(Cluster(name="a")) is None


def _touch(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_a_listener_certificate_is_reloaded_in_place(tmp_path: Path) -> None:
    crt, key = self_signed(tmp_path)
    ca, _ = self_signed(tmp_path, "ca")
    cache = TLSContexts()
    tls = TLSContext(cert_file=crt, key_file=key, ca_file=ca)
    ref = cache.server_ref(tls)
    ctx = ref.ctx
    self_signed(tmp_path)  # a new certificate and key, same paths; the CA file unchanged
    _touch(crt)
    assert cache.rotate(cache.rotation()) == {}  # nothing to swap: the live object reloaded
    assert ref.ctx is ctx and cache.server(tls) is ctx
    assert (cache.reloaded, cache.replaced) == (1, 0)


def test_changed_trust_anchors_replace_a_listener_context_so_a_removed_ca_is_gone(
        tmp_path: Path) -> None:
    """A live context can gain CAs but never lose one: the entry gets a new context, which
    listeners read at their next accept."""
    crt, key = self_signed(tmp_path)
    ca, _ = self_signed(tmp_path, "ca")
    cache = TLSContexts()
    tls = TLSContext(cert_file=crt, key_file=key, ca_file=ca)
    ref = cache.server_ref(tls)
    old = ref.ctx
    (old_ca,) = old.get_ca_certs()
    self_signed(tmp_path, "ca")  # the CA file now holds another CA
    _touch(ca)
    assert cache.rotate(cache.rotation()) == {}
    assert ref.ctx is not old and cache.server(tls) is ref.ctx
    (new_ca,) = ref.ctx.get_ca_certs()
    assert new_ca["serialNumber"] != old_ca["serialNumber"]
    assert (cache.reloaded, cache.replaced) == (0, 1)
    cache.retain([ref.ctx])  # what a listener reports in use: its entry's current context
    assert len(cache) == 1


def test_the_proxys_contexts_make_direct_ssl_objects(tmp_path: Path) -> None:
    """Every context the proxy builds (client and server) wraps its connections in
    `DirectSSLObject` (ADR 0067): the TLS transport's record calls go straight to OpenSSL."""
    crt, key = self_signed(tmp_path)
    server = build_server_context(TLSContext(cert_file=str(crt), key_file=str(key)))
    client = build_client_context(TLSContext(ca_file=str(crt)), "http1")
    for ctx, side in ((server, True), (client, False)):
        assert ctx.sslobject_class is DirectSSLObject
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=side,
                           server_hostname=None if side else "localhost")
        assert isinstance(obj, DirectSSLObject)
        assert obj.pending() == 0
        with pytest.raises(ssl.SSLWantReadError):  # nothing arrived yet: OpenSSL says so
            obj.read(1024)


async def test_a_swap_without_an_identity_or_bundle_and_what_used_it_is_taken(
        tmp_path: Path) -> None:
    """ADR 0126: a node's pod leaves its snapshot with the certificate section only it used.
    Before, every cached context was rebuilt against the new sections at each swap, and one
    naming a section no longer there failed the whole swap (`no identity named 'x'`)."""
    from tests.support.proxy import free_port

    from tulle.dataplane.server import ProxyServer

    crt, key = self_signed(tmp_path)
    pem = {"cert_chain_pem": Path(crt).read_text(), "private_key_pem": Path(key).read_text()}
    app = {"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 9}]}
    in_y: dict[str, Any] = {"name": "in-y", "port": free_port(), "filter_chains": [{
        "name": "t", "match": {"transport": "tls"}, "protocol": "http1", "cluster": "app",
        "tls": {"identity": "y", "trust_bundle": "bx"}}]}
    two: dict[str, Any] = {"version": "1", "admin": {"port": 0},
           "identities": [{"name": "x", **pem}, {"name": "y", **pem}],
           "trust_bundles": [{"name": "bx", "ca_pems": [pem["cert_chain_pem"]]}],
           "listeners": [{**in_y, "name": "in-x", "port": free_port(), "filter_chains": [{
               **in_y["filter_chains"][0], "tls": {"identity": "x", "trust_bundle": "bx"}}]},
               in_y],
           "clusters": [app, {**app, "name": "up-x",
                              "tls": {"identity": "x", "trust_bundle": "bx"}}]}
    server = ProxyServer()
    try:
        await server.apply(validate(two))
        assert len(server.tls) == 3  # a server context per listener, a client one
        # x leaves, with its bundle and everything that used them.
        one = {**two, "version": "2", "identities": [{"name": "y", **pem}], "trust_bundles": [],
               "listeners": [{**in_y, "filter_chains": [{**in_y["filter_chains"][0],
                                                          "tls": {"identity": "y"}}]}],
               "clusters": [app]}
        await server.apply(validate(one))
        assert server.config is not None and server.config.version == "2"
        assert len(server.tls) == 1  # forgotten after the commit
    finally:
        await server.close()
