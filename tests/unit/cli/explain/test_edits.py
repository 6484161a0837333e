"""The caller's request edits in a trace, as live traffic showed them: a rule's URLRewrite and
RequestHeaderModifier and a backend's own filters change what the destination's proxy routes
and authorizes (a DENY on the rewritten path refuses it), and a RequestRedirect is answered by
the caller's proxy with its status and location."""

from __future__ import annotations

from typing import Any

import msgspec
from tests.support.explain import GW, POLICY, compiled, service, trace, workload

from tulle.cli.explain.render import render

V2 = "outbound|80||api-v2.shop"


def headers(**kv: Any) -> dict[str, Any]:
    return {"type": "RequestHeaderModifier", "requestHeaderModifier": kv}


ROUTE = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                  "rules": [
                      {"name": "rewrite",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                       "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                           "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
                                   headers(set=[{"name": "x-via", "value": "mesh"}],
                                           remove=["x-drop"])],
                       "backendRefs": [{"name": "api-v2", "port": 80}]},
                      {"name": "split",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
                       "backendRefs": [
                           {"name": "api", "port": 80, "weight": 70},
                           {"name": "api-v2", "port": 80, "weight": 30, "filters": [
                               headers(set=[{"name": "x-backend", "value": "b2"}])]}]},
                      {"name": "redirect",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                       "filters": [{"type": "RequestRedirect", "requestRedirect": {
                           "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                           "statusCode": 301}}]},
                      {"name": "default", "backendRefs": [{"name": "api", "port": 80}]}]}}
V2_DENY = {"apiVersion": POLICY, "kind": "AuthorizationPolicy",
           "metadata": {"name": "v2-deny", "namespace": "shop"},
           "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api-v2"},
                    "action": "DENY",
                    "rules": [{"to": [{"paths": ["/items"]}]},
                              {"to": [{"headers": [{"name": "x-backend", "values": ["b2"]}]}]}]}}


def run(path: str, *given: str) -> dict[str, Any]:
    snaps = compiled(workload("web-0", 17000, app="web"), workload("api-0", 17100, app="api"),
                     workload("api2-0", 17200, app="api2"), service("api", app="api"),
                     service("api-v2", app="api2"), ROUTE, V2_DENY)
    return trace(snaps, path, headers=given, state="acked")


def test_the_destination_decides_on_the_rewritten_path_and_edited_headers() -> None:
    # the proxy sends /items with x-via set and x-drop removed: v2-deny's rule 0 refuses it
    doc = run("/v2/items", "x-drop=s3cret-value")
    hop = doc["hops"][0]
    assert hop["request"] == {"path": "/items", "headersSet": ["x-via"],
                              "headersRemoved": ["x-drop"]}
    ep = hop["endpoints"][0]
    assert (ep["result"], ep["authorization"]["policy"], ep["authorization"]["rule"]) == (
        "denied", "shop/v2-deny", 0)
    assert ep["inboundRoute"]["taken"] is not None
    assert doc["outcome"]["status"] == 403
    assert "as the caller's proxy sends it" in doc["outbound"]["note"]
    text = render(doc)
    assert "the caller's proxy sends: path /items; headers set x-via; headers removed x-drop" \
        in text
    assert "s3cret-value" not in text and "s3cret-value" not in msgspec.json.encode(doc).decode()
    # a path the rewrite leaves allowed is forwarded
    assert run("/v2/other")["outcome"]["status"] is None


def test_a_backends_own_filters_are_listed_and_run_for_its_share_only() -> None:
    doc = run("/split")
    plain, v2 = doc["hops"]
    assert "filters" not in plain and "request" not in plain
    assert plain["endpoints"][0]["result"] == "forwarded"
    assert [(f["type"], f["from"]) for f in v2["filters"]] == [
        ("RequestHeaderModifier", f"backend {V2}")]
    assert v2["request"] == {"headersSet": ["x-backend"]}
    a = v2["endpoints"][0]["authorization"]
    assert (v2["endpoints"][0]["result"], a["policy"], a["rule"]) == ("denied", "shop/v2-deny", 1)
    assert [p["status"] for p in doc["outcome"]["byBackend"]] == [None, 403]
    assert "filters for this backend, in run order:" in render(doc)


def test_a_redirect_is_answered_by_the_callers_proxy_with_its_status_and_location() -> None:
    doc = run("/old/a?q=1")
    assert doc["outcome"]["status"] == 301
    assert doc["outcome"]["location"] == "http://api/new/a?q=1"
    assert "hops" not in doc
    text = render(doc)
    assert "answers 301 with location http://api/new/a?q=1" in text
    assert "blackhole" not in text
