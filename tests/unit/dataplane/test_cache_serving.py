"""Which workloads a snapshot names (`cache_serving.named_workloads`, ADR 0126): what a node
agent restarted without some of them leaves out of its cache."""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.controlplane.push.node import merge
from tulle.dataplane.cache_serving import named_workloads
from tulle.proxyconfig.model import ProxyConfig


def _part(name: str, port: int) -> ProxyConfig:
    doc: dict[str, Any] = {
        "version": f"{name}-1", "node": {"name": name, "namespace": "ns"}, "admin": {"port": 0},
        "listeners": [{"name": f"inbound|{name}", "port": port, "direction": "inbound",
                       "filter_chains": [{"name": "mtls", "match": {"transport": "tls"},
                                          "protocol": "http1", "cluster": f"app-{name}",
                                          "tls": {"identity": "workload",
                                                  "trust_bundle": "mesh"}}]}],
        "clusters": [{"name": f"app-{name}", "endpoints": [{"address": "127.0.0.1",
                                                             "port": 9}]}]}
    return msgspec.convert(doc, ProxyConfig)


def test_a_node_snapshot_names_each_of_its_workloads_and_a_sidecars_only_its_own() -> None:
    a, b = _part("a", 1001), _part("b", 1002)
    node = merge([(("ns", "a"), a), (("ns", "b"), b)])
    assert named_workloads(node, "ns/a") == {"ns/a", "ns/b"}
    assert named_workloads(a, "ns/a") == {"ns/a"}  # untagged: the proxy's own alone
    # A part with nothing in it names nothing: absence never says a workload left.
    empty = merge([(("ns", "a"), a), (("ns", "e"), msgspec.structs.replace(
        a, version="e-1", node=msgspec.structs.replace(a.node, name="e"), listeners=[],
        clusters=[]))])
    assert named_workloads(empty, "ns/a") == {"ns/a"}
    # A workload whose certificate a TLS setting presents is named, tag or not.
    presents_c = msgspec.structs.replace(a, clusters=[msgspec.convert(
        {"name": "up", "endpoints": [{"address": "127.0.0.1", "port": 9}],
         "tls": {"identity": "workload:ns/c", "trust_bundle": "mesh"}}, type(a.clusters[0]))])
    assert named_workloads(presents_c, "ns/a") == {"ns/a", "ns/c"}
