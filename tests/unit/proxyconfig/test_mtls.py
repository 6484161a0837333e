"""The mesh mTLS fields of `TLSContext` (`min_version`, `expected_spiffe_ids`): bad values are
refused with their paths (ADR 0030)."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig import ConfigError, validate

BUNDLE = {"name": "mesh", "ca_pems": [
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]}


def config(cluster_tls: dict[str, Any], chain_tls: dict[str, Any] | None = None,
           ) -> dict[str, Any]:
    chains = []
    if chain_tls is not None:
        chains = [{"name": "m", "match": {"transport": "tls"}, "tls": chain_tls,
                   "protocol": "tcp", "cluster": "c"}]
    return {"listeners": [{"name": "l", "port": 1, "cluster": "c", "filter_chains": chains}],
            "clusters": [{"name": "c", "protocol": "tcp", "tls": cluster_tls,
                          "endpoints": [{"address": "127.0.0.1", "port": 2}]}],
            "trust_bundles": [BUNDLE]}


def errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    return [str(e) for e in err.value.errors]


def test_a_mesh_cluster_and_a_tls_terminating_tcp_chain_are_taken() -> None:
    cfg = validate(config(
        {"trust_bundle": "mesh", "min_version": "1.3",
         "expected_spiffe_ids": ["spiffe://mesh.local/ns/default/sa/web"]},
        {"cert_file": "/c", "key_file": "/k", "trust_bundle": "mesh", "min_version": "1.3"}))
    tls = cfg.clusters[0].tls
    assert tls is not None and tls.min_version == "1.3"
    assert cfg.listeners[0].filter_chains[0].protocol == "tcp"


def test_bad_spiffe_settings_are_refused_with_their_paths() -> None:
    got = errors(config(
        {"expected_spiffe_ids": ["spiffe://mesh.local/ns/a/sa/b", "https://x/y",
                                 "spiffe://UPPER.case/x", "spiffe://d/a//b"]},
        {"cert_file": "/c", "key_file": "/k",
         "expected_spiffe_ids": ["spiffe://mesh.local/ns/a/sa/b"]}))
    assert got == [
        "listeners[0].filter_chains[0].tls.expected_spiffe_ids: upstream (cluster) TLS only: "
        "a listener learns the client's identity, authorization decides on it",
        "clusters[0].tls.expected_spiffe_ids: needs a trust_bundle or ca_file to verify the "
        "server's certificate against",
        "clusters[0].tls.expected_spiffe_ids[1]: must be a SPIFFE ID "
        "(spiffe://<trust-domain>/<path>), got 'https://x/y'",
        "clusters[0].tls.expected_spiffe_ids[2]: must be a SPIFFE ID "
        "(spiffe://<trust-domain>/<path>), got 'spiffe://UPPER.case/x'",
        "clusters[0].tls.expected_spiffe_ids[3]: must be a SPIFFE ID "
        "(spiffe://<trust-domain>/<path>), got 'spiffe://d/a//b'",
    ]


def test_an_unknown_tls_version_is_refused_with_its_path() -> None:
    got = errors(config({"min_version": "1.1"}))
    assert len(got) == 1 and got[0].startswith("clusters[0].tls.min_version:")
