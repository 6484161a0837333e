"""The decision trace over snapshots the compiler really makes: routes with a header match and
a weighted split, an AuthorizationPolicy that denies one path, mTLS read from the clusters and
chains, and bad input refused with the field it is about."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from tests.support.explain import (
    GW,
    POLICY,
    Snapshots,
    compiled,
    expecting,
    service,
    trace,
    workload,
)

from tulle.cli.explain import ExplainError

ROUTE = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                  "rules": [
                      {"name": "canary-header",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                    "headers": [{"name": "x-canary", "value": "yes"}]}],
                       "backendRefs": [{"name": "api-v2", "port": 80}]},
                      {"name": "split",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "timeouts": {"request": "3s"},
                       "filters": [{"type": "RequestHeaderModifier",
                                    "requestHeaderModifier": {"set": [
                                        {"name": "x-via", "value": "split"}]}}],
                       "backendRefs": [{"name": "api", "port": 80, "weight": 90},
                                       {"name": "api-v2", "port": 80, "weight": 10}]}]}}
DENY_ADMIN = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
              "metadata": {"name": "no-admin", "namespace": "shop"},
              "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                       "action": "DENY",
                       "rules": [{"to": [{"methods": ["DELETE"]}]},
                                 {"to": [{"paths": ["/admin*"]}]}]}}


def snapshots(*extra: dict[str, Any]) -> Snapshots:
    return compiled(workload("web-0", 17000, app="web"),
                    workload("api-0", 17100, app="api", v="1"),
                    workload("api2-0", 17200, app="api2"), service("api", app="api"),
                    service("api-v2", app="api2"), ROUTE, DENY_ADMIN, *extra)


def test_a_header_match_wins_over_the_split_and_the_trace_says_why() -> None:
    doc = trace(snapshots(), "/items", headers=("x-canary=yes",))
    out = doc["outbound"]
    assert out["result"] == "matched"
    assert out["virtualHost"] == "api.shop:80"
    assert "canary-header" in out["route"]
    assert out["ruleIndex"] == 0
    assert out["taken"]["conditions"] == ["path PathPrefix '/'", "header x-canary Exact 'yes'"]
    assert out["notTaken"] == []
    assert [h["cluster"] for h in doc["hops"]] == ["outbound|80||api-v2.shop"]
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["workload"] == "shop/api2-0"
    assert ep["result"] == "forwarded"
    assert ep["mtls"] == "mTLS"  # the Mesh's default, STRICT (ADR 0033)
    assert ep["authorization"]["policy"] == "default"


def test_without_the_header_the_weighted_split_is_taken_and_the_header_rule_skipped() -> None:
    doc = trace(snapshots(), "/items", headers=("x-canary=no",))
    out = doc["outbound"]
    assert out["ruleIndex"] == 1
    assert len(out["notTaken"]) == 1
    skipped = out["notTaken"][0]
    assert "canary-header" in skipped["route"]
    assert skipped["why"] == "header x-canary Exact 'yes' does not hold"
    assert out["backends"] == [{"cluster": "outbound|80||api.shop", "weight": 90, "percent": 90.0},
                               {"cluster": "outbound|80||api-v2.shop", "weight": 10, "percent": 10.0}]
    assert out["timeouts"]["requestMs"] == 3000
    assert out["timeouts"]["requestFrom"] == "rule"
    assert [f["type"] for f in out["filters"]] == ["RequestHeaderModifier"]
    assert [h["weight"] for h in doc["hops"]] == [90, 10]
    # header values are used, never echoed: only names come back
    assert doc["request"]["headers"] == ["x-canary"]
    assert "no" not in msgspec.json.encode(doc["request"]).decode().replace("normal", "")


def test_a_deny_policy_is_named_with_its_rule_and_the_403_body() -> None:
    doc = trace(snapshots(), "/admin/users")
    api = doc["hops"][0]["endpoints"][0]
    assert api["workload"] == "shop/api-0"
    assert api["result"] == "denied"
    a = api["authorization"]
    assert (a["policy"], a["action"], a["rule"], a["allowed"]) == (
        "shop/no-admin", "DENY", 1, False)
    assert a["body"] == "RBAC: access denied by DENY policy shop/no-admin\n"
    assert doc["outcome"]["status"] == 403
    assert doc["outcome"]["policy"] == "shop/no-admin"
    # the first rule decides a DELETE
    doc = trace(snapshots(), "/items", method="DELETE")
    assert doc["hops"][0]["endpoints"][0]["authorization"]["rule"] == 0
    # and an allowed path names no rule: no ALLOW policy, no DENY matched (and says so,
    # not "no policy applies" above the DENY policy it lists)
    doc = trace(snapshots(), "/items")
    a = doc["hops"][0]["endpoints"][0]["authorization"]
    assert a["allowed"] and a["policy"] == "default"
    assert a["why"] == "no DENY policy matches and no ALLOW policy applies: allowed"
    assert doc["outcome"]["status"] is None


def test_a_denied_grpc_call_is_grpc_status_7_in_an_http_200_as_the_proxy_answers() -> None:
    doc = trace(snapshots(), "/admin/users", method="POST",
              headers=("content-type=application/grpc",))
    api = doc["hops"][0]["endpoints"][0]
    assert api["result"] == "denied"
    assert (api["status"], api["grpcStatus"], api["grpcCode"]) == (200, 7, "PERMISSION_DENIED")
    assert (doc["outcome"]["status"], doc["outcome"]["grpcStatus"]) == (200, 7)
    # (the canary's 90%: the 10% to api-v2 has no policy)
    assert "90.0% (outbound|80||api.shop): grpc-status 7 PERMISSION_DENIED by shop/api-0" in \
        doc["outcome"]["summary"]
    from tulle.cli.explain.render import render
    assert "response: HTTP 200, grpc-status 7 (PERMISSION_DENIED)" in render(doc)


def test_the_path_is_normalised_as_the_proxy_does_before_routing_and_authz() -> None:
    doc = trace(snapshots(), "/public/../admin/x")
    assert doc["outbound"]["path"] == "/admin/x"
    assert doc["hops"][0]["endpoints"][0]["result"] == "denied"
    doc = trace(snapshots(), "/a%00b")
    assert doc["outcome"]["status"] == 400


def test_an_allow_policy_that_does_not_match_says_which_policies_were_tried() -> None:
    allow = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
             "metadata": {"name": "reads", "namespace": "shop"},
             "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                      "rules": [{"to": [{"methods": ["GET"]}]}]}}
    doc = trace(snapshots(allow), "/items", method="POST")
    a = doc["hops"][0]["endpoints"][0]["authorization"]
    assert (a["allowed"], a["policy"], a["action"], a["rule"]) == (
        False, "shop/reads", "ALLOW", None)
    assert {p["name"] for p in a["policies"]} == {"shop/reads", "shop/no-admin"}
    doc = trace(snapshots(allow), "/items")
    a = doc["hops"][0]["endpoints"][0]["authorization"]
    assert (a["allowed"], a["policy"], a["rule"]) == (True, "shop/reads", 0)


def mesh(mode: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": {"mtls": {"mode": mode}}}


def test_mtls_is_read_from_the_compiled_clusters_and_chains() -> None:
    snaps = snapshots()  # the Mesh's default: STRICT
    doc = trace(snaps, "/items", headers=("x-canary=no",))
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["client"]["mode"] == "mTLS"
    assert ep["client"]["expectedIdentities"] == ["spiffe://cluster.local/ns/shop/sa/api"]
    assert ep["client"]["alpn"] == ["http/1.1"]
    assert ep["server"]["chain"] == "mtls"
    assert ep["server"]["accepts"] == "STRICT (mTLS only)"
    assert ep["server"]["alpn"] == "http/1.1"
    assert ep["mtls"] == "mTLS"
    assert ep["peerIdentity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert ep["result"] == "forwarded"
    # a client dialling plaintext (compiled with mTLS DISABLED) into STRICT is refused
    web = ("shop", "web-0")
    plain = dict(snaps)
    plain[web] = snapshots(mesh("DISABLED"))[web]
    ep = trace(plain, "/items", headers=("x-canary=no",))["hops"][0]["endpoints"][0]
    assert ep["result"] == "refused_by_server"
    assert ep["server"]["chain"] is None
    # PERMISSIVE takes it on the plaintext chain
    perm = snapshots(mesh("PERMISSIVE"))
    perm[web] = plain[web]
    ep = trace(perm, "/items", headers=("x-canary=no",))["hops"][0]["endpoints"][0]
    assert ep["server"]["accepts"] == "PERMISSIVE (mTLS or plaintext)"
    assert (ep["server"]["chain"], ep["mtls"], ep["peerIdentity"]) == ("plaintext",
                                                                       "plaintext", None)


def test_a_server_identity_not_expected_is_refused_by_the_client() -> None:
    snaps = expecting(snapshots(), "spiffe://cluster.local/ns/shop/sa/other")
    ep = trace(snaps, "/items", headers=("x-canary=no",))["hops"][0]["endpoints"][0]
    assert ep["result"] == "refused_by_client"
    assert ep["status"] == 503


def test_without_tls_in_the_snapshot_the_hop_is_plaintext() -> None:
    ep = trace(snapshots(mesh("DISABLED")), "/x", headers=("x-canary=no",))["hops"][0]["endpoints"][0]
    assert ep["client"] == {"mode": "plaintext", "why": ep["client"]["why"]}
    assert ep["server"]["accepts"] == "DISABLED (plaintext only)"


@pytest.mark.parametrize(("kwargs", "field", "status"), [
    ({"source": "shop/nobody"}, "from", 404),
    ({"to": "nothing.shop"}, "to", 404),
    ({"to": "api.shop:81"}, "to", 404),
    ({"to": "api shop"}, "to", 400),
    ({"to": "api:99999"}, "to", 400),
    ({"headers": ("novalue",)}, "header", 400),
    ({"headers": ("bad name=x",)}, "header", 400),
    ({"headers": ("host=x",)}, "header", 400),
    ({"path": "items"}, "path", 400),
    ({"method": "BREW"}, "method", 400),
    ({"headers": ("x-a=b\r\nx-injected: 1",)}, "header x-a", 400),
    ({"headers": ("x-a=" + "v" * 5000,)}, "header x-a", 400),
    ({"headers": tuple(f"x-{i}=1" for i in range(33))}, "header", 400),
    ({"path": "/a b"}, "path", 400),
    ({"path": "/" + "a" * 70_000}, "path", 400),  # past the proxy's 64 KiB request head
    ({"method": "post"}, "method", 400),  # case-sensitive: the proxy answers 400
    ({"headers": ("content-length=abc",)}, "header", 400),  # framing is the proxy's
    ({"headers": ("Transfer-Encoding=chunked",)}, "header", 400),
    ({"source": "shop/"}, "from", 400),
    # Attack review A1: what the proxy answers 400 (llhttp refuses control characters) is
    # not traced as if served, nor echoed to the terminal (`ESC ] 52`: set the clipboard).
    ({"headers": ("x-a=t\x1b]52;c;ZXZpbA==\x07",)}, "header x-a", 400),
    ({"headers": ("x-a=t\x7f",)}, "header x-a", 400),
    ({"headers": ("x-a=t\x0bv",)}, "header x-a", 400),
    ({"path": "/a\x1b[2J"}, "path", 400),
    ({"path": "/a\tb"}, "path", 400),
])
def test_bad_input_is_refused_with_the_field(kwargs: dict[str, Any], field: str,
                                             status: int) -> None:
    with pytest.raises(ExplainError) as err:
        trace(snapshots(), **kwargs)
    assert err.value.field == field
    assert err.value.status == status


def test_a_path_the_proxy_serves_is_traced_however_long() -> None:
    """A 9,000-character path: the proxy answers it (its limit is the 64 KiB head), and
    explain refused it."""
    doc = trace(snapshots(), "/" + "a" * 9000)
    assert doc["outcome"]["summary"].startswith("90.0% (outbound|80||api.shop): forwarded to "
                                                "shop/api-0 over mTLS"), doc["outcome"]


def test_authorization_sees_the_forwarding_fields_the_proxies_add() -> None:
    """The caller's proxy adds x-request-id, x-forwarded-proto and x-forwarded-for before
    the destination decides; a DENY matching them refused the real request while explain
    said allowed."""
    deny = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
            "metadata": {"name": "hdr-deny", "namespace": "shop"},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                     "action": "DENY",
                     "rules": [{"to": [{"paths": ["/rid"], "headers": [
                                   {"name": "x-request-id", "values": ["*"]}]}]},
                               {"to": [{"paths": ["/xfp"], "headers": [
                                   {"name": "x-forwarded-proto", "values": ["http"]}]}]},
                               {"to": [{"paths": ["/xff"], "headers": [
                                   {"name": "x-forwarded-for", "values": ["*"]}]}]}]}}
    snaps = snapshots(deny)
    for path, rule in (("/rid", 0), ("/xfp", 1), ("/xff", 2)):
        hop = trace(snaps, path)["hops"][0]["endpoints"][0]
        assert hop["result"] == "denied", (path, hop)
        assert hop["authorization"]["policy"] == "shop/hdr-deny", hop
        assert hop["authorization"]["rule"] == rule, hop
    # A request id the application sent is kept, not replaced.
    assert trace(snaps, "/other", headers=("x-request-id=abc",))["hops"][0]["endpoints"][0][
        "result"] == "forwarded"


def test_rule_numbers_are_the_written_positions_when_a_rule_is_for_another_port() -> None:
    """The compiled policy leaves out a rule whose operations all name other ports; the
    rule that matched was named by its compiled position (6 for the 9th written)."""
    policy = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
              "metadata": {"name": "via", "namespace": "shop"},
              "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                       "action": "DENY",
                       "rules": [{"to": [{"ports": [1], "paths": ["/via"]}]},
                                 {"to": [{"paths": ["/other"]}]},
                                 {"to": [{"paths": ["/via"]}]}]}}
    snaps = snapshots(policy)
    hop = trace(snaps, "/via", specs={"shop/via": policy["spec"]})["hops"][0]["endpoints"][0]
    assert (hop["result"], hop["authorization"]["rule"]) == ("denied", 2), hop
    listed = next(p for p in hop["authorization"]["policies"] if p["name"] == "shop/via")
    assert (listed["rules"], listed["rulesOnThisPort"]) == (3, 2)
    assert "rule 2" in hop["authorization"]["why"]
    # Without the written policy (offline), the compiled position is all there is.
    hop = trace(snaps, "/via")["hops"][0]["endpoints"][0]
    assert hop["authorization"]["rule"] == 1


def test_the_text_trace_names_the_rule_the_policy_and_the_hop() -> None:
    from tulle.cli.explain.render import render

    text = render(trace(snapshots(), "/admin/x", headers=("x-canary=secret-value",)))
    assert "secret-value" not in text
    assert "x canary-header" not in text  # the header rule was taken
    assert "authorization: DENY by shop/no-admin rule 1 (DENY)" in text
    assert "response: 403 RBAC: access denied by DENY policy shop/no-admin" in text
    assert "hop: mTLS" in text
    text = render(trace(snapshots(mesh("DISABLED")), "/x", headers=("x-canary=no",)))
    assert "x shop/api/canary-header match 0: header x-canary Exact 'yes' does not hold" in \
        text or "header x-canary Exact 'yes' does not hold" in text
    assert "RequestHeaderModifier (rule)" in text
    assert "outcome: 90.0% (outbound|80||api.shop): forwarded to shop/api-0 over plaintext" in text
    assert "10.0% (outbound|80||api-v2.shop): forwarded to shop/api2-0" in text


def test_a_rule_that_changes_the_request_says_the_inbound_side_sees_it_unchanged() -> None:
    out = trace(snapshots(), "/x", headers=("x-canary=no",))["outbound"]
    assert "RequestHeaderModifier changes the request" in out["note"]
    assert "note" not in trace(snapshots(), "/x", headers=("x-canary=yes",))["outbound"]


def test_a_rules_session_persistence_is_listed_last_among_its_filters() -> None:
    route = msgspec.json.decode(msgspec.json.encode(ROUTE))
    route["spec"]["rules"][1]["sessionPersistence"] = {"sessionName": "sid", "idleTimeout": "5m"}
    doc = trace(snapshots(route), "/items", headers=("x-canary=no",))
    filters = doc["outbound"]["filters"]
    assert [f["type"] for f in filters] == ["RequestHeaderModifier", "SessionPersistence"]
    assert filters[1] == {"from": "rule", "type": "SessionPersistence", "name": "sid",
                          "kind": "Cookie", "path": "/", "permanent": False,
                          "absolute_timeout_ms": 0, "idle_timeout_ms": 300_000}
