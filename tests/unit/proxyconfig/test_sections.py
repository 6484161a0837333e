"""Identities, trust bundles, metadata and zones in the contract: validated by path (never
quoting key material), carried through deltas, withheld from proxies that lack the feature,
shown (keys redacted) in the config dump."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tulle.proxyconfig import ConfigError, validate
from tulle.proxyconfig.delta import apply_delta, diff
from tulle.proxyconfig.features import BY_NAME, withhold_config, withhold_delta
from tulle.proxyconfig.load import dump

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"


def doc(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node": {"name": "web-0", "zone": "eu-1a"},
        "listeners": [{"name": "in", "port": 1, "cluster": "app",
                       "tls": {"identity": "web", "trust_bundle": "mesh"}}],
        "clusters": [{"name": "app", "metadata": {"service": "web", "namespace": "shop",
                                                   "labels": {"version": "v1"}},
                      "endpoints": [{"address": "127.0.0.1", "port": 2, "zone": "eu-1b",
                                     "metadata": {"workload": "web-0"}}]}],
        "identities": [{"name": "web", "cert_chain_pem": CERT, "private_key_pem": KEY}],
        "trust_bundles": [{"name": "mesh", "ca_pems": [CERT]}],
    }
    base.update(extra)
    return base


def test_metadata_and_zones_are_carried_and_shown_with_keys_redacted() -> None:
    cfg = validate(doc())
    shown = json.loads(dump(cfg))
    assert shown["node"]["zone"] == "eu-1a"
    assert shown["clusters"][0]["metadata"] == {"service": "web", "namespace": "shop",
                                                "workload": "", "labels": {"version": "v1"}}
    assert shown["clusters"][0]["endpoints"][0]["metadata"]["workload"] == "web-0"
    assert shown["identities"][0] == {"name": "web", "cert_chain_pem": CERT,
                                      "private_key_pem": "<redacted>"}
    assert "TOPSECRET" not in dump(cfg).decode() and "TOPSECRET" not in repr(cfg)


def test_references_and_material_are_checked_by_path_without_quoting_it() -> None:
    bad = doc(identities=[{"name": "web", "cert_chain_pem": "x", "private_key_pem": "TOPSECRET"},
                          {"name": "web", "cert_chain_pem": CERT, "private_key_pem": KEY}],
              trust_bundles=[{"name": "mesh", "ca_pems": []}])
    bad["clusters"][0]["tls"] = {"identity": "gone", "cert_file": "/x.crt", "key_file": "/x.key"}
    with pytest.raises(ConfigError) as err:
        validate(bad)
    assert [str(e) for e in err.value.errors] == [
        "identities[0].name: duplicate name 'web'",
        "identities[1].name: duplicate name 'web'",
        "clusters[0].tls.identity: no identity named 'gone'",
        "clusters[0].tls.identity: not together with cert_file / key_file",
        "identities[0].cert_chain_pem: must hold a PEM certificate",
        "identities[0].private_key_pem: must hold a PEM private key",
        "trust_bundles[0].ca_pems: at least one CA is required",
    ]
    assert "TOPSECRET" not in str(err.value)


def test_identities_travel_in_deltas_and_a_rotation_is_one_upsert() -> None:
    old = validate(doc(version="v1"))
    rotated = doc(version="v2")
    rotated["identities"][0]["private_key_pem"] = KEY.replace("TOPSECRET", "NEWSECRET")
    new = validate(rotated)
    d = diff(old, new)
    assert [i["name"] for i in d.identities.upsert] == ["web"]
    assert not d.listeners.upsert and not d.clusters.upsert and not d.trust_bundles.upsert
    assert apply_delta(old, d) == new


def test_a_proxy_without_the_features_gets_none_of_the_fields() -> None:
    missing = [BY_NAME["tls-sections"], BY_NAME["metadata"], BY_NAME["filter-chains"]]
    raw = msgspec.to_builtins(validate(doc()))
    withhold_config(raw, missing)
    assert "identities" not in raw and "trust_bundles" not in raw
    assert "zone" not in raw["node"] and "metadata" not in raw["clusters"][0]
    assert "metadata" not in raw["clusters"][0]["endpoints"][0]
    assert set(raw["listeners"][0]["tls"]).isdisjoint({"identity", "trust_bundle"})
    assert "filter_chains" not in raw["listeners"][0]

    old = validate(doc(version="v1"))
    new_doc = doc(version="v2")
    new_doc["identities"][0]["cert_chain_pem"] = CERT + CERT
    new_doc["clusters"][0]["metadata"]["labels"] = {"version": "v2"}
    delta = msgspec.to_builtins(diff(old, validate(new_doc)))
    withhold_delta(delta, missing)
    assert "identities" not in delta
    assert "metadata" not in delta["clusters"]["upsert"][0]
