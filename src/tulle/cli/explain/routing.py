"""The routing step of a trace: which virtual host, which rule and match win, and why each
match ahead of it in precedence order did not.

Not a second router: the answer is the proxy's own `Router` (`dataplane/routing/router.py`,
with its `Decision`) built from the compiled route table, on a `RequestHead` made the way the
codecs make one, after the proxy's own path normalisation (`routing/paths.py`).  The reasons
come from the same compiled matchers (`CompiledHost.matches`, in precedence order, each
`PathMatcher` and `Condition` asked in turn); if they ever disagreed with the router the trace
says so rather than print a story the proxy does not follow.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.cli.explain.retries import retry_doc
from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.chain import POSITION
from tulle.dataplane.listeners.dispatch import add_forwarding_headers
from tulle.dataplane.routing.match import (
    AuthorityMatcher,
    Condition,
    HeaderMatcher,
    MethodMatcher,
    PathMatcher,
    QueryMatcher,
    StringMatcher,
)
from tulle.dataplane.routing.paths import PathRejected, normalizer_for
from tulle.dataplane.routing.router import CompiledHost, CompiledMatch, Route, Router
from tulle.proxyconfig.filters import RequestRedirect
from tulle.proxyconfig.model import ProxyConfig, RouteTable


def head_for(method: str, path: str, authority: str,
             headers: tuple[tuple[str, str], ...]) -> RequestHead:
    return RequestHead(method.encode(), path.encode(), authority.encode(), b"http",
                       [(n.encode(), v.encode()) for n, v in headers])


GENERATED_ID = b"(generated)"
"""What a request id the proxy generates reads as in a trace (each real one is new)."""


def copy_head(head: RequestHead) -> RequestHead:
    """A copy of `head` a trace may edit (its own header list; the bytes are shared)."""
    return RequestHead(head.method, head.path, head.authority, head.scheme, list(head.headers))


def forwarded(head: RequestHead, peer: str, generate_request_id: bool) -> RequestHead:
    """A copy of `head` as a proxy routes and passes it on: the fields
    `add_forwarding_headers` sets before routing (the client appended to x-forwarded-for,
    x-forwarded-proto and x-request-id when absent), which a route or an authorization rule
    may match on.  A generated request id reads `(generated)`."""
    out = copy_head(head)
    had_id = any(n == b"x-request-id" for n, _ in out.headers)
    add_forwarding_headers(out, peer.encode(), generate_request_id)
    if not had_id:
        out.headers = [(n, GENERATED_ID if n == b"x-request-id" else v) for n, v in out.headers]
    return out


def normalized(cfg: ProxyConfig, path: str) -> tuple[str | None, str]:
    """(the path the proxy routes, or None when it answers 400; why)."""
    norm = normalizer_for(cfg.settings.path_normalization)
    if norm is None:
        return path, "path normalization is off: routed as received"
    try:
        out = norm.normalize(path.encode()).decode("latin-1")
    except PathRejected as exc:
        return None, f"400: {exc.detail}"
    return out, ("unchanged by path normalization" if out == path
                 else f"normalized from {path!r}")


def _string(m: StringMatcher | None) -> str:
    if m is None:
        return "present"
    kind = type(m).__name__
    return f"{kind} {m.value.decode('latin-1')!r}" + (" (any case)" if m.ignore_case else "")


def describe_condition(c: Condition) -> str:
    if isinstance(c, MethodMatcher):
        return f"method {c.method.decode()}"
    if isinstance(c, AuthorityMatcher):
        what = f"authority {_string(c.value)}"
    elif isinstance(c, HeaderMatcher):
        what = f"header {c.name.decode()} {_string(c.value)}"
    elif isinstance(c, QueryMatcher):
        what = f"query parameter {c.name.decode()} {_string(c.value)}"
    else:  # pragma: no cover - every condition kind has a branch
        what = type(c).__name__
    return ("not " + what) if getattr(c, "invert", False) else what


def describe_path(p: PathMatcher) -> str:
    return f"path {p.type} {p.value!r}"


def why_not(cm: CompiledMatch, path: bytes, head: RequestHead, query: bytes) -> str | None:
    """The first condition of `cm` that does not hold (None: all hold), in the order the
    router tests a lone match: the path, then the conditions."""
    if not cm.path.matches(path):
        return f"{describe_path(cm.path)} does not match"
    for c in cm.conditions:
        if not c.matches(head, query):
            return f"{describe_condition(c)} does not hold"
    return None


def _match_doc(cm: CompiledMatch) -> dict[str, Any]:
    rule = cm.route.rule
    at = next((i for i, m in enumerate(rule.matches) if m is cm.match), -1)
    return {"route": cm.route.name, "matchIndex": at,
            "match": msgspec.to_builtins(cm.match),
            "conditions": [describe_path(cm.path)] + [describe_condition(c)
                                                      for c in cm.conditions]}


def filters_doc(route: Route, cluster: str | None = None) -> list[dict[str, Any]]:
    """The rule's filters (and `cluster`'s backend filters) in the order the proxy runs them
    (`http/chain.py`'s declared order; config order among equals)."""
    own = [(POSITION[factory_for(f, route.rule.matches).name], i, "rule",
            msgspec.to_builtins(f)) for i, f in enumerate(route.rule.filters)]
    for b in route.rule.backends:
        if b.cluster == cluster:
            own += [(POSITION[factory_for(f).name], len(own) + i, f"backend {cluster}",
                     msgspec.to_builtins(f)) for i, f in enumerate(b.filters)]
    own.sort(key=lambda t: (t[0], t[1]))
    return [{"from": src, **cfg} for _, _, src, cfg in own]


def backends_doc(route: Route) -> list[dict[str, Any]]:
    total = sum(b.weight for b in route.rule.backends)
    return [{"cluster": b.cluster, "weight": b.weight,
             "percent": round(100 * b.weight / total, 2) if total else 0.0}
            for b in route.rule.backends]


def trace_table(cfg: ProxyConfig, table_name: str, head: RequestHead) -> tuple[
        dict[str, Any], Route | None]:
    """Route `head` (path already normalised) by table `table_name` of `cfg`: the trace and
    the route the proxy takes (None: it answers 404 itself)."""
    table = next((t for t in cfg.route_tables if t.name == table_name), None)
    if table is None:
        return {"routeTable": table_name, "result": "no_route_table",
                "why": f"route table {table_name!r} is not in the snapshot"}, None
    router = Router(table, cfg.settings.request_timeout_ms)
    route = router.route(head)
    host = router.host_for(head.authority.decode("latin-1"))
    doc: dict[str, Any] = {"routeTable": table_name}
    if host is None:
        doc.update(result="no_virtual_host", status=404,
                   why=f"no virtual host of {table_name!r} answers to authority "
                       f"{head.authority.decode('latin-1')!r}")
        return doc, None
    doc["virtualHost"] = host.name
    doc["domains"] = _domains(table, host)
    path, _, query = head.path.partition(b"?")
    skipped: list[dict[str, Any]] = []
    winner: CompiledMatch | None = None
    for cm in host.matches:  # precedence order
        reason = why_not(cm, path, head, query)
        if reason is None:
            winner = cm
            break
        skipped.append({**_match_doc(cm), "why": reason})
    doc["notTaken"] = skipped
    if (winner.route if winner is not None else None) is not route:  # pragma: no cover
        doc.update(result="inconsistent", why="the router and the match-by-match reading "
                   "disagree; please report this with the snapshot")
        return doc, route
    if route is None or winner is None:
        doc.update(result="no_match", status=404,
                   why=f"none of the {len(host.matches)} matches of {host.name} holds: the "
                       "proxy answers 404")
        return doc, None
    rule_index = _rule_index(router, host, route)
    doc.update(result="matched", route=route.name, ruleIndex=rule_index,
               taken=_match_doc(winner),
               why=("first match in precedence order whose conditions all hold"
                    + (f" ({len(skipped)} ahead of it did not)" if skipped else "")),
               timeouts={"requestMs": route.timeout_ms,
                         "requestFrom": "rule" if route.rule.timeout_ms is not None
                         else "settings.request_timeout_ms",
                         "perTryMs": route.rule.backend_timeout_ms or 0},
               backends=backends_doc(route), filters=filters_doc(route),
               retry=retry_doc(route, head.method.decode("latin-1")))
    if any(isinstance(f, RequestRedirect) for f in route.rule.filters):
        doc["localReply"] = "redirect: the proxy answers with the RequestRedirect itself"
    return doc, route


def _domains(table: RouteTable, host: CompiledHost) -> list[str]:
    vh = next((v for v in table.virtual_hosts if v.name == host.name), None)
    return list(vh.domains) if vh is not None else []


def _rule_index(router: Router, host: CompiledHost, route: Route) -> int:
    for e in router.compiled.entries:
        if e.host is host:
            return next((i for i, r in enumerate(e.routes) if r is route), -1)
    return -1  # pragma: no cover - the host came from this router
