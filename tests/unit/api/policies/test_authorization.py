"""AuthorizationPolicy: ALLOW/DENY/AUDIT, rules with `from` identities/namespaces and `to` operations."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.policies.authorization import AuthorizationPolicy

AP: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "a", "namespace": "shop"},
    "spec": {
        "targetRef": {"group": "", "kind": "Service", "name": "reviews"},
        "action": "DENY",
        "rules": [
            {
                "from": [
                    {
                        "identities": [
                            "spiffe://cluster.local/ns/shop/sa/web",
                            "spiffe://cluster.local/ns/ops/*",
                        ]
                    },
                    {"namespaces": ["batch", "*"]},
                ],
                "to": [{"ports": [9080], "paths": ["/admin/*", "/exact"], "methods": ["POST", "DELETE"]}],
            }
        ],
    },
}


def test_valid_and_from_alias() -> None:
    ap = parse(AP)
    assert isinstance(ap, AuthorizationPolicy)
    rule = ap.spec.rules[0]
    assert rule.from_ is not None and rule.from_[1].namespaces == ["batch", "*"]
    assert ap.to_dict()["spec"]["rules"][0]["from"][0]["identities"][0].endswith("/sa/web")
    assert parse(with_(AP, "spec", {"targetRef": AP["spec"]["targetRef"]})).spec.action == "ALLOW"  # type: ignore[attr-defined]


R = "spec.rules.0"


@pytest.mark.parametrize(
    ("path", "value", "error_path", "message"),
    [
        ("spec.action", "REJECT", "spec.action", 'must be "ALLOW", "DENY" or "AUDIT", got "REJECT"'),
        (
            f"{R}.from.0",
            {},
            "spec.rules[0].from[0]",
            "set identities, namespaces, serviceAccounts, ipBlocks or workloadLabels (an empty source would "
            "match everyone)",
        ),
        (
            f"{R}.from.0",
            {"workloadLabels": {}},
            "spec.rules[0].from[0].workloadLabels",
            "name at least one label (an empty selector would match every workload)",
        ),
        (
            f"{R}.to.0",
            {},
            "spec.rules[0].to[0]",
            "set ports, paths, methods or headers (an empty operation would match everything)",
        ),
        (
            f"{R}.from.0.identities",
            ["web"],
            "spec.rules[0].from[0].identities[0]",
            'must be a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>), "*", '
            'or a SPIFFE ID prefix ending in *; got "web"',
        ),
        (  # no workload certificate carries an ID of another shape: it could never match
            f"{R}.from.0.identities",
            ["spiffe://x"],
            "spec.rules[0].from[0].identities[0]",
            'must be a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>), "*", '
            'or a SPIFFE ID prefix ending in *; got "spiffe://x"',
        ),
        (
            f"{R}.from.0.identities",
            ["spiffe://cluster.local/ns/shop/sa/web/extra"],
            "spec.rules[0].from[0].identities[0]",
            'must be a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>), "*", '
            'or a SPIFFE ID prefix ending in *; got "spiffe://cluster.local/ns/shop/sa/web/extra"',
        ),
        (
            f"{R}.from.1.namespaces",
            ["Bad"],
            "spec.rules[0].from[1].namespaces[0]",
            'must be a namespace name or "*", got "Bad"',
        ),
        (
            f"{R}.to.0.paths",
            ["admin"],
            "spec.rules[0].to[0].paths[0]",
            'must start with "/" (or be "*"), got "admin"',
        ),
        (
            f"{R}.to.0.paths",
            ["/a*b"],
            "spec.rules[0].to[0].paths[0]",
            '"*" may only end a path (a prefix match), got "/a*b"',
        ),
        (
            f"{R}.to.0.methods",
            ["get"],
            "spec.rules[0].to[0].methods[0]",
            'must be an upper-case HTTP method such as GET, got "get"',
        ),
        (f"{R}.to.0.ports", [0], "spec.rules[0].to[0].ports[0]", "must be >= 1, got 0"),
        (f"{R}.to.0.ports", [], "spec.rules[0].to[0].ports", "must have at least 1 items, got 0"),
        (f"{R}.from_", [], "spec.rules[0].from_", "unknown field"),
    ],
)
def test_rules(path: str, value: Any, error_path: str, message: str, errors: Errors) -> None:
    assert errors(with_(AP, path, value)) == [(error_path, message)]


def test_sources_by_account_and_cidr_operations_by_header_and_dry_run() -> None:
    rules = [{"from": [{"serviceAccounts": ["shop/web"], "ipBlocks": ["10.0.0.0/8", "::1"]}],
              "to": [{"headers": [{"name": "x-env", "values": ["prod", "stag*"]}]}]}]
    ap = parse(with_(AP, "spec", {**AP["spec"], "rules": rules, "dryRun": True}))
    assert isinstance(ap, AuthorizationPolicy) and ap.spec.dryRun
    ns = parse(with_(AP, "spec", {"targetRef": {"group": "", "kind": "Namespace", "name": "shop"}}))
    assert isinstance(ns, AuthorizationPolicy)


def test_bad_accounts_cidrs_and_header_values_are_refused(errors: Errors) -> None:
    rules = [{"from": [{"serviceAccounts": ["web"], "ipBlocks": ["10.0.0.300/8"]}],
              "to": [{"headers": [{"name": "x", "values": ["a*b"]}]}]}]
    assert errors(with_(AP, "spec", {**AP["spec"], "rules": rules})) == [
        ("spec.rules[0].from[0].serviceAccounts[0]",
         'must be namespace/serviceaccount, got "web"'),
        ("spec.rules[0].from[0].ipBlocks[0]", 'must be an IP address or CIDR, got "10.0.0.300/8"'),
        ("spec.rules[0].to[0].headers[0].values[0]",
         '"*" may only start or end a value, got "a*b"')]


def test_an_exact_identity_with_a_trailing_newline_is_refused() -> None:
    # `match` with `$` took it (`$` matches before a final newline); stored, it matched no one.
    from tulle.api.policies.authorization import _check_identity

    assert _check_identity("spiffe://cluster.local/ns/shop/sa/web").endswith("/sa/web")
    with pytest.raises(ValueError, match="must be a SPIFFE ID"):
        _check_identity("spiffe://cluster.local/ns/shop/sa/web\n")
