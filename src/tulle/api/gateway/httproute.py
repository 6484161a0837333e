"""`HTTPRoute` (`gateway.networking.k8s.io/v1`): how HTTP requests to a Service are routed.

Semantics are Gateway API's: a rule matches when any of its `matches` does (each match ANDs
its conditions); no match means `PathPrefix /`.  A `PathPrefix` matches whole path segments —
`/abc` matches `/abc`, `/abc/` and `/abc/def` but not `/abcd`, and a trailing `/` in the prefix
is ignored.  Backends share requests by `weight`.  The validation rules are the spec's CEL
rules, reported with the path of the field they are about.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, HeaderName, Port, PreciseHostname, duration_ms
from tulle.api.gateway.common import (
    GATEWAY_V1,
    HTTPROUTE_VERSIONS,
    BackendRef,
    HTTPHeaderFilter,
    HTTPRequestMirrorFilter,
    HTTPRouteVersion,
    LocalObjectReference,
    RouteSpecWithHostnames,
    RouteStatus,
    RuleName,
    check_filter_union,
    check_unique_filter_types,
    check_unique_rule_names,
)
from tulle.api.gateway.session import SessionPersistence
from tulle.api.meta import Model, Resource
from tulle.api.registry import register

MAX_RULES = 16
MAX_MATCHES_PER_RULE = 64
MAX_MATCHES_PER_ROUTE = 128
"""Gateway API v1.1 raised matches per rule from 8 to 64, capping the route at 128 in total."""

_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")
_PATH_FORBIDDEN = ("//", "/./", "/../", "%2f", "%2F", "#")


def path_problem(value: str) -> str | None:
    """Why `value` is not a valid Exact/PathPrefix path (the spec's CEL rules), or None."""
    if not value.startswith("/"):
        return 'must start with "/"'
    for bad in _PATH_FORBIDDEN:
        if bad in value:
            return f"must not contain {bad!r}".replace("'", '"')
    for bad in ("/..", "/."):
        if value.endswith(bad):
            return f'must not end with "{bad}"'
    if not _PATH_CHARS.match(value):
        return "must contain only URL path characters (RFC 3986 pchar, '/' and %-escapes)"
    return None


class HTTPPathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: Annotated[str, Field(max_length=1024)] = "/"

    @model_validator(mode="after")
    def _value(self) -> HTTPPathMatch:
        if self.type == "RegularExpression":
            try:
                re.compile(self.value)
            except re.error as exc:
                raise field_error(("value",), f"invalid regular expression: {exc}") from None
            return self
        problem = path_problem(self.value)
        if problem:
            raise field_error(("value",), problem)
        return self


class HTTPHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Field(min_length=1, max_length=4096)]


class HTTPQueryParamMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Field(min_length=1, max_length=1024)]


HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


def _unique_match_names(items: Sequence[HTTPHeaderMatch | HTTPQueryParamMatch], field: str) -> None:
    seen: set[str] = set()
    for i, m in enumerate(items):
        if m.name in seen:
            raise field_error((field, i, "name"), f"{m.name!r} is matched more than once".replace("'", '"'))
        seen.add(m.name)


class HTTPRouteMatch(Model):
    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)
    headers: Annotated[list[HTTPHeaderMatch], Field(max_length=16)] | None = None
    queryParams: Annotated[list[HTTPQueryParamMatch], Field(max_length=16)] | None = None
    method: HTTPMethod | None = None

    @model_validator(mode="after")
    def _unique(self) -> HTTPRouteMatch:
        if self.headers:
            _unique_match_names(self.headers, "headers")
        if self.queryParams:
            _unique_match_names(self.queryParams, "queryParams")
        return self


class HTTPPathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replaceFullPath: Annotated[str, Field(max_length=1024)] | None = None
    replacePrefixMatch: Annotated[str, Field(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _union(self) -> HTTPPathModifier:
        check_filter_union(
            self,
            self.type,
            {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"},
        )
        return self


class HTTPRequestRedirectFilter(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None
    port: Port | None = None
    statusCode: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(Model):
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None


HTTP_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}
REPEATABLE_FILTERS = frozenset({"RequestMirror", "ExtensionRef"})


class HTTPRouteFilter(Model):
    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "RequestRedirect",
        "URLRewrite",
        "ExtensionRef",
    ]
    requestHeaderModifier: HTTPHeaderFilter | None = None
    responseHeaderModifier: HTTPHeaderFilter | None = None
    requestMirror: HTTPRequestMirrorFilter | None = None
    requestRedirect: HTTPRequestRedirectFilter | None = None
    urlRewrite: HTTPURLRewriteFilter | None = None
    extensionRef: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _union(self) -> HTTPRouteFilter:
        check_filter_union(self, self.type, HTTP_FILTER_FIELDS)
        return self


def check_http_filters(filters: list[HTTPRouteFilter], where: str = "filters") -> None:
    check_unique_filter_types([f.type for f in filters], REPEATABLE_FILTERS, where)
    types = {f.type for f in filters}
    if "RequestRedirect" in types and "URLRewrite" in types:
        i = next(i for i, f in enumerate(filters) if f.type == "URLRewrite")
        raise field_error((where, i, "type"), "RequestRedirect and URLRewrite cannot both be used")


class HTTPBackendRef(BackendRef):
    filters: Annotated[list[HTTPRouteFilter], Field(max_length=16)] | None = None

    @model_validator(mode="after")
    def _filters(self) -> HTTPBackendRef:
        if self.filters:
            check_http_filters(self.filters)
        return self


class HTTPRouteTimeouts(Model):
    request: Duration | None = None
    """Whole request, client to proxy and back; "0s" disables."""
    backendRequest: Duration | None = None
    """One request from the proxy to a backend (each retry is one)."""

    @model_validator(mode="after")
    def _order(self) -> HTTPRouteTimeouts:
        if self.request is not None and self.backendRequest is not None:
            req = duration_ms(self.request)
            if req != 0 and duration_ms(self.backendRequest) > req:
                raise field_error(("backendRequest",), "must not be longer than the request timeout")
        return self


class HTTPRouteRetry(Model):
    """Gateway API retry (experimental channel, GEP-1731)."""

    codes: Annotated[list[Annotated[int, Field(ge=400, le=599)]], Field(max_length=100)] | None = None
    attempts: Annotated[int, Field(ge=0)] | None = None
    backoff: Duration | None = None


def _default_matches() -> list[HTTPRouteMatch]:
    return [HTTPRouteMatch()]


class HTTPRouteRule(Model):
    name: RuleName | None = None
    matches: Annotated[list[HTTPRouteMatch], Field(max_length=MAX_MATCHES_PER_RULE)] = Field(
        default_factory=_default_matches
    )
    filters: Annotated[list[HTTPRouteFilter], Field(max_length=16)] | None = None
    backendRefs: Annotated[list[HTTPBackendRef], Field(max_length=16)] = Field(default_factory=list)
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    sessionPersistence: SessionPersistence | None = None

    @model_validator(mode="after")
    def _rules(self) -> HTTPRouteRule:
        filters = self.filters or []
        check_http_filters(filters)
        if self.backendRefs and any(f.type == "RequestRedirect" for f in filters):
            raise field_error(("filters",), "a RequestRedirect filter cannot be used with backendRefs")
        for f in filters:
            modifier = f.requestRedirect or f.urlRewrite
            if (
                modifier is not None
                and modifier.path is not None
                and modifier.path.type == "ReplacePrefixMatch"
            ):
                prefix_matches = [m for m in self.matches if m.path.type == "PathPrefix"]
                if len(self.matches) != 1 or len(prefix_matches) != 1:
                    raise field_error(
                        ("matches",),
                        f"a {f.type} filter with path.replacePrefixMatch needs exactly one match, "
                        "of type PathPrefix",
                    )
        return self


class HTTPRouteSpec(RouteSpecWithHostnames):
    rules: Annotated[list[HTTPRouteRule], Field(max_length=MAX_RULES)] = Field(
        default_factory=lambda: [HTTPRouteRule()]
    )

    @model_validator(mode="after")
    def _route(self) -> HTTPRouteSpec:
        total = sum(len(r.matches) for r in self.rules)
        if total > MAX_MATCHES_PER_ROUTE:
            raise field_error(
                ("rules",), f"must have at most {MAX_MATCHES_PER_ROUTE} matches in all, got {total}"
            )
        check_unique_rule_names([r.name for r in self.rules])
        return self


@register(api_version=GATEWAY_V1, kind="HTTPRoute", plural="httproutes",
          also_served=HTTPROUTE_VERSIONS[1:])
class HTTPRoute(Resource):
    apiVersion: HTTPRouteVersion = GATEWAY_V1
    kind: Literal["HTTPRoute"] = "HTTPRoute"
    spec: HTTPRouteSpec
    status: RouteStatus | None = None
