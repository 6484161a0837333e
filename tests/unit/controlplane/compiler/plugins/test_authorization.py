"""The authorization plugin's binding and status (ADR 0031, 0087): a Service-targeted policy
binds to that Service's ports and to ports no Service names, never to another Service's; rules
that cannot match anything are said in status (`apply` warns with them)."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, derive, plugins
from tulle.controlplane.compiler.ir import MeshModel

V1 = "mesh.tulle.dev/v1alpha1"
POLICY = "policy.tulle.dev/v1alpha1"


def _rpc_raw_admin() -> list[dict[str, Any]]:
    """rpc-0 serves Service `rpc` on 19000, Service `raw` on 17000, and 15999 no Service
    names (an admin port reached by the pod's address)."""
    return [
        {"apiVersion": V1, "kind": "Workload",
         "metadata": {"name": "rpc-0", "namespace": "shop", "labels": {"app": "rpc"}},
         "spec": {"address": "127.0.0.1", "serviceAccount": "rpc", "ports": [
             {"name": "grpc", "port": 19000, "targetPort": 9000, "appProtocol": "grpc"},
             {"name": "raw", "port": 17000, "targetPort": 7000, "appProtocol": "tcp"},
             {"name": "admin", "port": 15999, "targetPort": 5999}]}},
        {"apiVersion": V1, "kind": "Service", "metadata": {"name": "rpc", "namespace": "shop"},
         "spec": {"selector": {"app": "rpc"}, "ports": [{"port": 9000, "targetPort": "grpc"}]}},
        {"apiVersion": V1, "kind": "Service", "metadata": {"name": "raw", "namespace": "shop"},
         "spec": {"selector": {"app": "rpc"}, "ports": [{"port": 7000, "targetPort": "raw"}]}},
    ]


def _policy(name: str, target: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": target}, **spec}}


def _run(docs: list[dict[str, Any]]) -> MeshModel:
    return plugins.run(derive(MeshInputs.from_resources(docs)), "authorization")


def _bound(mesh: MeshModel) -> dict[int, list[str]]:
    (proxy,) = [x for x in mesh.proxies if x.name == "rpc-0"]
    return {a.port: [p.name for p in a.policies] for a in proxy.authz}


def _conditions(mesh: MeshModel, name: str) -> dict[str, tuple[bool, str, str]]:
    conds = mesh.conditions[("AuthorizationPolicy", "shop", name)]
    return {c.type: (c.status, c.reason, c.message) for c in conds}


def test_a_service_policy_leaves_another_services_port_alone() -> None:
    mesh = _run([*_rpc_raw_admin(),
                 _policy("raw-deny-web", "raw", action="DENY",
                         rules=[{"from": [{"namespaces": ["web"]}]}])])
    # raw's port and the port no Service names; not rpc's 19000.
    assert _bound(mesh) == {17000: ["shop/raw-deny-web"], 15999: ["shop/raw-deny-web"]}
    status, reason, message = _conditions(mesh, "raw-deny-web")["Accepted"]
    assert (status, reason) == (True, "Enforced")
    assert message == "enforced on 2 inbound port(s) of 1 workload(s)"


def test_identity_rules_on_a_port_whose_service_turns_mtls_off_are_flagged() -> None:
    plain = {"apiVersion": POLICY, "kind": "MutualTLSPolicy",
             "metadata": {"name": "rpc-plain", "namespace": "shop"},
             "spec": {"targetRef": {"group": "", "kind": "Service", "name": "rpc"},
                      "mode": "DISABLED"}}
    allow = _policy("rpc-from-api", "rpc",
                    rules=[{"from": [{"identities": ["spiffe://cluster.local/ns/shop/sa/api"]}]}])
    mesh = _run([*_rpc_raw_admin(), plain, allow])
    status, reason, message = _conditions(mesh, "rpc-from-api")["IdentitiesVerified"]
    assert (status, reason) == (False, "MTLSNotEnforced")
    assert "shop/rpc-0:19000 DISABLED" in message
    # The same policy with the mesh's STRICT on every port it is bound to: no condition.
    assert "IdentitiesVerified" not in _conditions(_run([*_rpc_raw_admin(), allow]),
                                                   "rpc-from-api")


def test_rules_that_can_never_match_are_flagged() -> None:
    foreign = _policy("foreign", "rpc", rules=[
        {"from": [{"identities": ["spiffe://example.org/ns/shop/sa/api",
                                  "spiffe://cluster.local/ns/shop/sa/web", "*",
                                  "spiffe://cluster.local/*"]}]}])
    service_port = _policy("by-service-port", "rpc", action="DENY",
                           rules=[{"to": [{"ports": [9000]}]}])
    good_port = _policy("by-workload-port", "rpc", action="DENY",
                        rules=[{"to": [{"ports": [19000]}]}])
    mesh = _run([*_rpc_raw_admin(), foreign, service_port, good_port])
    status, reason, message = _conditions(mesh, "foreign")["RulesMatchable"]
    assert (status, reason) == (False, "ForeignTrustDomain")
    assert "spiffe://example.org/ns/shop/sa/api" in message and "cluster.local" in message
    status, reason, message = _conditions(mesh, "by-service-port")["RulesMatchable"]
    assert (status, reason) == (False, "NoSuchPort")
    assert "to.ports [9000]" in message and "[15999, 19000]" in message
    assert "RulesMatchable" not in _conditions(mesh, "by-workload-port")


def test_a_trust_domain_alias_is_the_same_workload_to_clients_and_to_policies() -> None:
    """Moving the mesh from cluster.local to example.org: certificates still name cluster.local
    until re-issued, so with the alias clients accept either and an identity in either trust
    domain matches (ADR 0087)."""
    mesh_doc = {"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"},
                "spec": {"trustDomain": "example.org", "trustDomainAliases": ["cluster.local"]}}
    allow = _policy("rpc-from-api", "rpc",
                    rules=[{"from": [{"identities": ["spiffe://cluster.local/ns/shop/sa/api",
                                                     "spiffe://other.org/ns/shop/sa/api"]}]}])
    mesh = plugins.run(derive(MeshInputs.from_resources([*_rpc_raw_admin(), mesh_doc, allow])),
                       "mtls")
    (proxy,) = [x for x in mesh.proxies if x.name == "rpc-0"]
    (authz,) = [a for a in proxy.authz if a.port == 19000]
    (source,) = authz.policies[0].rules[0].sources
    assert source.principals == ["spiffe://cluster.local/ns/shop/sa/api",
                                 "spiffe://example.org/ns/shop/sa/api",
                                 "spiffe://other.org/ns/shop/sa/api"]
    status, reason, message = _conditions(mesh, "rpc-from-api")["RulesMatchable"]
    assert (status, reason) == (False, "ForeignTrustDomain")
    assert "other.org" in message and "cluster.local/ns" not in message
    # get/describe show the aliases among the Mesh's settings in force
    settings = {c.type: c for c in mesh.conditions[("Mesh", "", "default")]}["SettingsApplied"]
    assert settings.status and "trustDomainAliases cluster.local" in settings.message
    (rpc,) = [sp for sp in mesh.services if sp.name == "rpc"]
    assert rpc.tls is not None
    assert rpc.tls.expected_spiffe_ids == ("spiffe://cluster.local/ns/shop/sa/rpc",
                                           "spiffe://example.org/ns/shop/sa/rpc")


def test_ip_blocks_of_one_family_on_a_dual_stack_sidecar_are_flagged() -> None:
    """A transparent sidecar takes IPv6 as well as IPv4 (ADR 0088): a DENY whose `ipBlocks`
    name only IPv4 does not refuse the same caller over IPv6; the status says so.  An explicit
    proxy on an IPv4 address takes IPv4 only: nothing to say."""
    docs = _rpc_raw_admin()
    explicit = [_policy("v4-only", "rpc", action="DENY",
                        rules=[{"from": [{"ipBlocks": ["10.231.0.5/32"]}]}])]
    assert "SourceFamiliesCovered" not in _conditions(_run([*docs, *explicit]), "v4-only")
    docs[0]["spec"] = {**docs[0]["spec"], "address": "10.231.0.3", "interception": "transparent"}
    both = _policy("both", "rpc", action="DENY",
                   rules=[{"from": [{"ipBlocks": ["10.231.0.5/32", "fd00:231::5/128"]}]}])
    mesh = _run([*docs, *explicit, both])
    status, reason, message = _conditions(mesh, "v4-only")["SourceFamiliesCovered"]
    assert (status, reason) == (False, "IPBlocksOneFamily")
    assert message.startswith("rules[0].from[0].ipBlocks name IPv4 only, while shop/rpc-0 "
                              "take IPv6: ")
    assert "a DENY does not refuse it" in message
    assert "SourceFamiliesCovered" not in _conditions(mesh, "both")


def test_an_ipv4_mapped_block_counts_as_ipv4() -> None:
    """`::ffff:10.231.0.5/128` matches the IPv4 peer 10.231.0.5 (peers' mapped addresses are
    compared as IPv4): beside an IPv6 block it covers both families, alone it covers IPv4
    only, and the status says so."""
    docs = _rpc_raw_admin()
    docs[0]["spec"] = {**docs[0]["spec"], "address": "10.231.0.3", "interception": "transparent"}
    mapped = _policy("mapped", "rpc", action="DENY",
                     rules=[{"from": [{"ipBlocks": ["::ffff:10.231.0.5/128"]}]}])
    both = _policy("both", "rpc", action="DENY",
                   rules=[{"from": [{"ipBlocks": ["::ffff:10.231.0.5/128", "fd00:231::5/128"]}]}])
    mesh = _run([*docs, mapped, both])
    status, reason, message = _conditions(mesh, "mapped")["SourceFamiliesCovered"]
    assert (status, reason) == (False, "IPBlocksOneFamily")
    assert message.startswith("rules[0].from[0].ipBlocks name IPv4 only")
    assert "SourceFamiliesCovered" not in _conditions(mesh, "both")
