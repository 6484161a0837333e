"""HTTPRoute: Gateway API v1 fields, defaults and validation rules, each with its exact path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.gateway.httproute import HTTPRoute

ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                "backendRefs": [{"name": "reviews-v1", "port": 9080}],
            }
        ],
    },
}

# As Istio's GAMMA docs write it (header match, weights), and as Linkerd's write it (`group: core`).
ISTIO_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v3
      port: 9080
      weight: 10
"""

LINKERD_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: books-timeout
  namespace: booksapp
spec:
  parentRefs:
    - name: books
      kind: Service
      group: core
      port: 7002
  rules:
    - matches:
        - path:
            value: "/books/"
            type: "PathPrefix"
          method: GET
      backendRefs:
        - name: books
          port: 7002
      timeouts:
        request: 10s
    - filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set:
              - name: l5d-extra
                value: "1"
            remove: ["x-debug"]
      backendRefs:
        - name: books
          port: 7002
"""


@pytest.mark.parametrize("text", [ISTIO_ROUTE, LINKERD_ROUTE], ids=["istio", "linkerd"])
def test_routes_written_for_other_meshes_validate_unchanged(text: str) -> None:
    route = parse(yaml.safe_load(text))
    assert isinstance(route, HTTPRoute)
    assert route.spec.parentRefs[0].is_service


def test_defaults_follow_the_spec() -> None:
    route = parse({**ROUTE, "spec": {"parentRefs": ROUTE["spec"]["parentRefs"]}})
    assert isinstance(route, HTTPRoute)
    [rule] = route.spec.rules
    [match] = rule.matches
    assert (match.path.type, match.path.value) == ("PathPrefix", "/")
    assert rule.backendRefs == []
    backend = parse(ROUTE).spec.rules[0].backendRefs[0]  # type: ignore[attr-defined]
    assert (backend.group, backend.kind, backend.weight) == ("", "Service", 1)
    gw_parent = parse(with_(ROUTE, "spec.parentRefs", [{"name": "gw"}])).spec.parentRefs[0]  # type: ignore[attr-defined]
    assert (gw_parent.group, gw_parent.kind, gw_parent.is_service) == (
        "gateway.networking.k8s.io",
        "Gateway",
        False,
    )


MATCH = "spec.rules.0.matches.0"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ({"type": "PathPrefix", "value": "api"}, 'must start with "/"'),
        ({"type": "Exact", "value": "api"}, 'must start with "/"'),
        ({"type": "PathPrefix", "value": "/a//b"}, 'must not contain "//"'),
        ({"type": "Exact", "value": "/a/../b"}, 'must not contain "/../"'),
        ({"type": "PathPrefix", "value": "/a%2fb"}, 'must not contain "%2f"'),
        ({"type": "PathPrefix", "value": "/a#b"}, 'must not contain "#"'),
        ({"type": "PathPrefix", "value": "/a/."}, 'must not end with "/."'),
        ({"type": "PathPrefix", "value": "/a/.."}, 'must not end with "/.."'),
        (
            {"type": "PathPrefix", "value": "/a b"},
            "must contain only URL path characters (RFC 3986 pchar, '/' and %-escapes)",
        ),
        (
            {"type": "RegularExpression", "value": "/a("},
            "invalid regular expression: missing ), unterminated subpattern at position 2",
        ),
    ],
)
def test_path_value_rules(path: dict[str, str], message: str, errors: Errors) -> None:
    assert errors(with_(ROUTE, f"{MATCH}.path", path)) == [("spec.rules[0].matches[0].path.value", message)]


def test_path_values_that_are_fine(errors: Errors) -> None:
    for path in (
        {"type": "PathPrefix", "value": "/api/"},  # trailing slash: same as /api
        {"type": "Exact", "value": "/a/b%20c"},
        {"type": "RegularExpression", "value": "^/v[0-9]+/.*"},  # a regex need not start with /
    ):
        assert errors(with_(ROUTE, f"{MATCH}.path", path)) == []


def test_path_type_enum(errors: Errors) -> None:
    assert errors(with_(ROUTE, f"{MATCH}.path", {"type": "Prefix", "value": "/"})) == [
        (
            "spec.rules[0].matches[0].path.type",
            'must be "Exact", "PathPrefix" or "RegularExpression", got "Prefix"',
        )
    ]


def test_header_query_and_method_matches(errors: Errors) -> None:
    match = {
        "path": {"value": "/"},
        "headers": [
            {"name": "x-user", "value": "jason"},
            {"type": "RegularExpression", "name": "x-v", "value": "v.*"},
        ],
        "queryParams": [{"name": "debug", "value": "1"}],
        "method": "POST",
    }
    assert errors(with_(ROUTE, MATCH, match)) == []
    assert errors(with_(ROUTE, f"{MATCH}.headers", [{"name": "bad header", "value": "x"}])) == [
        (
            "spec.rules[0].matches[0].headers[0].name",
            'must be an HTTP header name (an RFC 7230 token), got "bad header"',
        )
    ]
    assert errors(
        with_(ROUTE, f"{MATCH}.headers", [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}])
    ) == [("spec.rules[0].matches[0].headers[1].name", '"a" is matched more than once')]
    assert errors(with_(ROUTE, f"{MATCH}.queryParams", [{"name": "q", "value": ""}])) == [
        ("spec.rules[0].matches[0].queryParams[0].value", "must not be empty")
    ]
    assert errors(with_(ROUTE, f"{MATCH}.method", "FETCH")) == [
        (
            "spec.rules[0].matches[0].method",
            'must be "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", '
            '"OPTIONS", "TRACE" or "PATCH", got "FETCH"',
        )
    ]


def test_limits(errors: Errors) -> None:
    rule = ROUTE["spec"]["rules"][0]
    assert errors(with_(ROUTE, "spec.rules", [rule] * 17)) == [
        ("spec.rules", "must have at most 16 items, got 17")
    ]
    assert errors(with_(ROUTE, "spec.rules.0.matches", [{}] * 65)) == [
        ("spec.rules[0].matches", "must have at most 64 items, got 65")
    ]
    many = {**rule, "matches": [{}] * 60}
    assert errors(with_(ROUTE, "spec.rules", [many, many, many])) == [
        ("spec.rules", "must have at most 128 matches in all, got 180")
    ]
    assert errors(with_(ROUTE, "spec.hostnames", ["Bad.example"])) == [
        (
            "spec.hostnames[0]",
            'must be a lowercase DNS name, optionally starting with "*.", got "Bad.example"',
        )
    ]


def test_backend_refs(errors: Errors) -> None:
    backends = "spec.rules.0.backendRefs"
    assert errors(with_(ROUTE, backends, [{"name": "a"}])) == [
        ("spec.rules[0].backendRefs[0].port", "required when referring to a Service")
    ]
    # a backend of another kind needs no port
    assert errors(with_(ROUTE, backends, [{"group": "example.com", "kind": "Bucket", "name": "b"}])) == []
    assert errors(with_(ROUTE, backends, [{"name": "a", "port": 80, "weight": 1_000_001}])) == [
        ("spec.rules[0].backendRefs[0].weight", "must be <= 1000000, got 1000001")
    ]
    assert errors(with_(ROUTE, backends, [{"name": "a", "port": 80, "weight": -1}])) == [
        ("spec.rules[0].backendRefs[0].weight", "must be >= 0, got -1")
    ]
    assert errors(with_(ROUTE, backends, [{"name": "a", "port": 0}])) == [
        ("spec.rules[0].backendRefs[0].port", "must be >= 1, got 0")
    ]


FILTERS = "spec.rules.0.filters"


def test_filters_valid(errors: Errors) -> None:
    filters = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "1"}]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["server"]}},
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "shadow", "port": 80}, "percent": 10},
        },
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow2", "port": 80}}},
        {
            "type": "URLRewrite",
            "urlRewrite": {
                "hostname": "internal",
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"},
            },
        },
    ]
    assert errors(with_(ROUTE, FILTERS, filters)) == []
    redirect = [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]
    assert errors(with_(with_(ROUTE, FILTERS, redirect), "spec.rules.0.backendRefs", [])) == []


@pytest.mark.parametrize(
    ("filters", "path", "message"),
    [
        (
            [{"type": "RequestHeaderModifier"}],
            "filters[0].requestHeaderModifier",
            "required when type is RequestHeaderModifier",
        ),
        (
            [{"type": "URLRewrite", "urlRewrite": {}, "requestHeaderModifier": {}}],
            "filters[0].requestHeaderModifier",
            "must not be set when type is URLRewrite (it belongs to type RequestHeaderModifier)",
        ),
        (
            [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {}}] * 2,
            "filters[1].type",
            "ResponseHeaderModifier filter cannot be repeated",
        ),
        (
            [{"type": "RequestRedirect", "requestRedirect": {}}, {"type": "URLRewrite", "urlRewrite": {}}],
            "filters[1].type",
            "RequestRedirect and URLRewrite cannot both be used",
        ),
        (
            [{"type": "RequestRedirect", "requestRedirect": {}}],
            "filters",
            "a RequestRedirect filter cannot be used with backendRefs",
        ),
        (
            [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {
                        "add": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]
                    },
                }
            ],
            "filters[0].requestHeaderModifier.add[1].name",
            'header "a" appears more than once',
        ),
        (
            [
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": "m", "port": 1},
                        "percent": 5,
                        "fraction": {"numerator": 1},
                    },
                }
            ],
            "filters[0].requestMirror.fraction",
            "only one of percent or fraction may be set",
        ),
        (
            [
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": "m", "port": 1},
                        "fraction": {"numerator": 3, "denominator": 2},
                    },
                }
            ],
            "filters[0].requestMirror.fraction.numerator",
            "must be <= denominator (2), got 3",
        ),
        (
            [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {"path": {"type": "ReplaceFullPath", "replacePrefixMatch": "/x"}},
                }
            ],
            "filters[0].urlRewrite.path.replaceFullPath",
            "required when type is ReplaceFullPath",
        ),
        (
            [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}],
            "filters[0].requestRedirect.statusCode",
            "must be 301, 302, 303, 307 or 308, got 304",
        ),
    ],
)
def test_filter_rules(filters: list[Any], path: str, message: str, errors: Errors) -> None:
    assert errors(with_(ROUTE, FILTERS, filters)) == [(f"spec.rules[0].{path}", message)]


def test_replace_prefix_match_needs_one_path_prefix_match(errors: Errors) -> None:
    doc = with_(
        ROUTE,
        FILTERS,
        [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
            }
        ],
    )
    assert errors(doc) == []
    exact = with_(doc, "spec.rules.0.matches", [{"path": {"type": "Exact", "value": "/a"}}])
    assert errors(exact) == [
        (
            "spec.rules[0].matches",
            "a URLRewrite filter with path.replacePrefixMatch needs exactly one match, of type PathPrefix",
        )
    ]


def test_timeouts(errors: Errors) -> None:
    t = "spec.rules.0.timeouts"
    assert errors(with_(ROUTE, t, {"request": "10s", "backendRequest": "1m"})) == [
        ("spec.rules[0].timeouts.backendRequest", "must not be longer than the request timeout")
    ]
    assert errors(with_(ROUTE, t, {"request": "0s", "backendRequest": "1m"})) == []  # 0s: no request timeout
    assert errors(with_(ROUTE, t, {"request": "1m30s", "backendRequest": "500ms"})) == []
    assert errors(with_(ROUTE, t, {"request": "10"})) == [
        (
            "spec.rules[0].timeouts.request",
            'must be a duration such as "10s", "1m30s" or "250ms" (units h, m, s, ms), got "10"',
        )
    ]


def test_rule_names_unique(errors: Errors) -> None:
    rule = {**ROUTE["spec"]["rules"][0], "name": "main"}
    assert errors(with_(ROUTE, "spec.rules", [rule, rule])) == [
        ("spec.rules[1].name", 'duplicate rule name "main"')
    ]


def test_session_persistence_fields_and_rules(errors: Errors) -> None:
    sp = "spec.rules.0.sessionPersistence"
    at = "spec.rules[0].sessionPersistence"
    ok = {"sessionName": "Session-A", "type": "Cookie", "absoluteTimeout": "1h",
          "idleTimeout": "10m", "cookieConfig": {"lifetimeType": "Permanent"}}
    assert errors(with_(ROUTE, sp, ok)) == []
    assert errors(with_(ROUTE, sp, {})) == []  # every field has a default
    assert errors(with_(ROUTE, sp, {"type": "Header", "sessionName": "x-session"})) == []
    assert errors(with_(ROUTE, sp, {"cookieConfig": {"lifetimeType": "Permanent"}})) == [
        (f"{at}.absoluteTimeout", "required when cookieConfig.lifetimeType is Permanent")]
    assert errors(with_(ROUTE, sp, {"type": "Header", "absoluteTimeout": "1h",
                                    "cookieConfig": {"lifetimeType": "Permanent"}})) == [
        (f"{at}.cookieConfig.lifetimeType", "Permanent applies to Cookie sessions only")]
    assert errors(with_(ROUTE, sp, {"absoluteTimeout": "500ms",
                                    "cookieConfig": {"lifetimeType": "Permanent"}})) == [
        (f"{at}.absoluteTimeout",
         "a Permanent cookie's lifetime (its Max-Age) must be at least 1s")]
    assert errors(with_(ROUTE, sp, {"idleTimeout": "9000h"})) == [
        (f"{at}.idleTimeout", "must be at most 8760h (a year)")]
    bad = errors(with_(ROUTE, sp, {"sessionName": "a b;c"}))
    assert [p for p, _ in bad] == [f"{at}.sessionName"]
    assert [p for p, _ in errors(with_(ROUTE, sp, {"sessionName": "a" * 129}))] == [
        f"{at}.sessionName"]
    assert [p for p, _ in errors(with_(ROUTE, sp, {"type": "QueryParam"}))] == [f"{at}.type"]
    assert [p for p, _ in errors(with_(ROUTE, sp, {"cookieName": "x"}))] == [f"{at}.cookieName"]
