"""The router against a brute-force reading of Gateway API precedence, on generated tables.

The reference below is written from the specification, not from the router: collect every
(rule, match) whose conditions all hold, rank them (Exact path, regular expression by pattern
length, longest prefix; then method, header count, query count; then declaration order) and
take the first.  Hypothesis generates the tables and the requests from small alphabets so that
ties and near misses are common.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.router import Router
from tulle.proxyconfig import validate

PATHS = ["/", "/a", "/a/b", "/b"]
REGEXES = ["/a/.*", "/[ab]", "/a/[a-z]+"]
NAMES = ["x", "y"]
VALUES = ["1", "1", "2"]

path_match = st.one_of(  # mostly the catch-all, so that the conditions decide
    st.just(("PathPrefix", "/")), st.just(("PathPrefix", "/")),
    st.tuples(st.sampled_from(["PathPrefix", "Exact"]), st.sampled_from(PATHS)),
    st.tuples(st.just("RegularExpression"), st.sampled_from(REGEXES)))
match = st.fixed_dictionaries({
    "path": path_match.map(lambda tv: {"type": tv[0], "value": tv[1]}),
    "headers": st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES), max_size=2).map(
        lambda d: [{"name": k, "value": v} for k, v in d.items()]),
    "query_params": st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES),
                                    max_size=2).map(
        lambda d: [{"name": k, "value": v} for k, v in d.items()]),
    "method": st.sampled_from([None, None, "GET", "POST"]),
})
rules = st.lists(st.lists(match, min_size=1, max_size=3), min_size=1, max_size=5)
MOSTLY_1 = st.sampled_from(["1", "1", "1", "2"])  # requests that satisfy many conditions
request = st.tuples(
    st.sampled_from(["/", "/a", "/a/", "/a/b", "/a/bc", "/ab", "/b", "/c"]),
    st.sampled_from(["GET", "POST"]),
    st.dictionaries(st.sampled_from(NAMES), MOSTLY_1, min_size=1, max_size=2),
    st.lists(st.tuples(st.sampled_from(NAMES), MOSTLY_1), min_size=1, max_size=3))


def _path_ok(m: dict[str, Any], path: str) -> bool:
    t, v = m["path"]["type"], m["path"]["value"]
    if t == "Exact":
        return path == v
    if t == "RegularExpression":
        return re.fullmatch(v, path, re.DOTALL) is not None
    v = v.rstrip("/") or "/"
    return v == "/" or path == v or path.startswith(v + "/")


def _first_values(query: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in query:
        out.setdefault(unquote(k), unquote(v))
    return out


def reference(table: list[list[dict[str, Any]]], path: str, method: str,
              headers: dict[str, str], query: list[tuple[str, str]]) -> int | None:
    params = _first_values(query)
    found = []
    order = 0
    for i, matches in enumerate(table):
        for m in matches:
            ok = (_path_ok(m, path)
                  and (m["method"] is None or m["method"] == method)
                  and all(headers.get(h["name"]) == h["value"] for h in m["headers"])
                  and all(params.get(q["name"]) == q["value"] for q in m["query_params"]))
            if ok:
                t, v = m["path"]["type"], m["path"]["value"]
                rank = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}[t]
                length = len(v.rstrip("/") or "/") if t == "PathPrefix" else len(v)
                found.append(((rank, -length, m["method"] is None, -len(m["headers"]),
                               -len(m["query_params"]), order), i))
            order += 1
    return min(found)[1] if found else None


def _m(path: str = "/", headers: tuple[str, ...] = (), query: tuple[str, ...] = (),
       method: str | None = None) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix", "value": path}, "method": method,
            "headers": [{"name": n, "value": "1"} for n in headers],
            "query_params": [{"name": n, "value": "1"} for n in query]}


ALL_SET = ("/", "GET", {"x": "1", "y": "1"}, [("x", "1"), ("y", "1")])


@settings(max_examples=200, deadline=None)
@given(rules, request)
@example([[_m(query=("x", "y"))], [_m(headers=("x",))]], ALL_SET)  # headers outrank queries
@example([[_m(headers=("x", "y"))], [_m(method="GET")]], ALL_SET)  # a method outranks headers
@example([[_m(method="GET")], [_m(path="/a")]], ("/a", "GET", {}, []))  # a prefix outranks all
def test_the_router_picks_what_gateway_api_precedence_says(
        table: list[list[dict[str, Any]]],
        req: tuple[str, str, dict[str, str], list[tuple[str, str]]]) -> None:
    path, method, headers, query = req
    raw = {"clusters": [{"name": "c"}], "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "h", "rules": [{"name": f"r{i}", "matches": [
            {k: v for k, v in m.items() if v is not None} for m in matches],
            "backends": [{"cluster": "c"}]} for i, matches in enumerate(table)]}]}]}
    router = Router(validate(raw).route_tables[0], 15000)
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    head = RequestHead(method.encode(), target.encode(), b"h", b"http",
                       [(k.encode(), v.encode()) for k, v in headers.items()])
    got = router.only or router.route(head)
    want = reference(table, path, method, headers, query)
    assert (None if got is None else int(got.name[1:])) == want
