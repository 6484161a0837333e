"""The compiled decision routes exactly like trying the matches one by one, and runs each
distinct condition at most once per request.

The property test's reference is written here from Gateway API and the matcher rules of
`match.py`, not from the router: every (rule, match) whose path, method, header and query
conditions all hold is ranked (Exact path, regular expression by pattern length, longest
prefix; method, header count, query count; declaration order) and the first wins.  The tables
and requests come from small alphabets (exact and regex conditions on the same names, prefixes
of several lengths, repeated headers, escaped query names, the `host` header) so that shared
conditions, ties and near misses are common.  Each case is also checked against the router's
own straightforward scan (`CompiledHost.scan`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing import decide
from tulle.dataplane.routing import match as match_module
from tulle.dataplane.routing.router import Router
from tulle.proxyconfig import validate
from tulle.proxyconfig.regex import compile_safe

PREFIXES = ["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/c"]
EXACTS = ["/a", "/a/b", "/ab/", "/"]
REGEXES = ["/a/.*", "/[ab]", "/a/[a-z]+", "/.*b"]
HEADER_NAMES = ["x", "y", "host"]
QUERY_NAMES = ["x", "y"]
EXACT_VALUES = ["1", "1", "2", "1,2", ""]
REGEX_VALUES = ["1|2", "[0-9]+", "1,.*", ".*"]

path_match = st.one_of(
    st.just(("PathPrefix", "/")),
    st.tuples(st.just("PathPrefix"), st.sampled_from(PREFIXES)),
    st.tuples(st.just("Exact"), st.sampled_from(EXACTS)),
    st.tuples(st.just("RegularExpression"), st.sampled_from(REGEXES)))
condition = st.one_of(
    st.tuples(st.just("Exact"), st.sampled_from(EXACT_VALUES)),
    st.tuples(st.just("RegularExpression"), st.sampled_from(REGEX_VALUES)))


def _conditions(names: list[str]) -> st.SearchStrategy[list[dict[str, str]]]:
    return st.dictionaries(st.sampled_from(names), condition, max_size=2).map(
        lambda d: [{"name": k, "type": t, "value": v} for k, (t, v) in d.items()])


match = st.fixed_dictionaries({
    "path": path_match.map(lambda tv: {"type": tv[0], "value": tv[1]}),
    "headers": _conditions(HEADER_NAMES),
    "query_params": _conditions(QUERY_NAMES),
    "method": st.sampled_from([None, None, "GET", "POST"]),
})
rules = st.lists(st.lists(match, min_size=1, max_size=3), min_size=1, max_size=8)
VALUE = st.sampled_from(["1", "1", "2", "12", ""])
request = st.fixed_dictionaries({
    "path": st.sampled_from(["/", "/a", "/a/", "/a/b", "/a/bc", "/ab", "/ab/", "/b", "/c",
                             "/a/b/c", "/a/b/cd", "/xb"]),
    "method": st.sampled_from(["GET", "POST"]),
    "authority": st.sampled_from(["1", "2", "h", ""]),
    "headers": st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), VALUE), max_size=4),
    "query": st.lists(st.tuples(st.sampled_from(["x", "y", "%78"]),
                                st.sampled_from(["1", "%31", "2", ""])), max_size=3),
})


def _path_ok(t: str, v: str, path: str) -> bool:
    if t == "Exact":
        return path == v
    if t == "RegularExpression":
        return re.fullmatch(v, path, re.DOTALL) is not None
    v = v.rstrip("/") or "/"
    return v == "/" or path == v or path.startswith(v + "/")


def _value_ok(cond: dict[str, str], value: str | None) -> bool:
    if value is None:
        return False
    if cond["type"] == "Exact":
        return value == cond["value"]
    return re.fullmatch(cond["value"], value, re.DOTALL) is not None


def reference(table: list[list[dict[str, Any]]], req: dict[str, Any]) -> int | None:
    """The rule Gateway API precedence picks for `req`, or None."""
    joined: dict[str, list[str]] = {}
    for n, v in req["headers"]:
        joined.setdefault(n, []).append(v)
    headers = {n: ",".join(vs) for n, vs in joined.items()}
    if req["authority"]:
        headers["host"] = req["authority"]
    params: dict[str, str] = {}
    for k, v in req["query"]:
        params.setdefault(unquote(k), unquote(v))
    found = []
    order = 0
    for i, matches in enumerate(table):
        for m in matches:
            t, v = m["path"]["type"], m["path"]["value"]
            if (_path_ok(t, v, req["path"])
                    and m["method"] in (None, req["method"])
                    and all(_value_ok(h, headers.get(h["name"])) for h in m["headers"])
                    and all(_value_ok(q, params.get(q["name"])) for q in m["query_params"])):
                rank = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}[t]
                length = len(v.rstrip("/") or "/") if t == "PathPrefix" else len(v)
                found.append(((rank, -length, m["method"] is None, -len(m["headers"]),
                               -len(m["query_params"]), order), i))
            order += 1
    return min(found)[1] if found else None


def _router(table: list[list[dict[str, Any]]]) -> Router:
    raw = {"clusters": [{"name": "c"}], "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "h", "domains": ["*"], "rules": [{"name": f"r{i}", "matches": [
            {k: v for k, v in m.items() if v is not None} for m in matches],
            "backends": [{"cluster": "c"}]} for i, matches in enumerate(table)]}]}]}
    return Router(validate(raw).route_tables[0], 15000)


def _head(req: dict[str, Any]) -> RequestHead:
    query = "&".join(f"{k}={v}" for k, v in req["query"])
    target = req["path"] + ("?" + query if query else "")
    return RequestHead(req["method"].encode(), target.encode(), req["authority"].encode(),
                       b"http", [(n.encode(), v.encode()) for n, v in req["headers"]])


def _m(path: tuple[str, str] = ("PathPrefix", "/"), headers: tuple[tuple[str, str, str], ...] = (),
       query: tuple[tuple[str, str, str], ...] = ()) -> dict[str, Any]:
    return {"path": {"type": path[0], "value": path[1]}, "method": None,
            "headers": [{"name": n, "type": t, "value": v} for n, t, v in headers],
            "query_params": [{"name": n, "type": t, "value": v} for n, t, v in query]}


def _req(path: str = "/", headers: tuple[tuple[str, str], ...] = (),
         query: tuple[tuple[str, str], ...] = (), authority: str = "h") -> dict[str, Any]:
    return {"path": path, "method": "GET", "authority": authority, "headers": list(headers),
            "query": list(query)}


@settings(max_examples=100, deadline=None)
@given(rules, st.lists(request, min_size=1, max_size=6))
@example([[_m(headers=(("x", "Exact", "1,2"),))], [_m()]],  # a repeated header, joined
         [_req(headers=(("x", "1"), ("x", "2")))])
@example([[_m(("PathPrefix", "/a/b"))], [_m(("PathPrefix", "/a"))]],  # segment boundaries
         [_req("/a/bc"), _req("/a/b/"), _req("/ab")])
@example([[_m(headers=(("host", "Exact", "h"),))], [_m(headers=(("host", "Exact", "2"),))]],
         [_req(authority="2")])
@example([[_m(query=(("x", "Exact", "1"),))]], [_req(query=(("%78", "%31"), ("x", "2")))])
@pytest.mark.parametrize("flat_max", [0, 1000], ids=["walk", "flat"])
def test_the_decision_routes_as_precedence_says_and_as_the_scan_does(
        flat_max: int, table: list[list[dict[str, Any]]],
        requests: list[dict[str, Any]]) -> None:
    saved = decide._FLAT_MAX  # noqa: SLF001
    decide._FLAT_MAX = flat_max  # noqa: SLF001  (both ways of running the general tests)
    try:
        _check(table, requests)
    finally:
        decide._FLAT_MAX = saved  # noqa: SLF001


def _check(table: list[list[dict[str, Any]]], requests: list[dict[str, Any]]) -> None:
    router = _router(table)
    for req in requests:
        head = _head(req)
        got = router.route(head)
        want = reference(table, req)
        assert (None if got is None else int(got.name[1:])) == want
        host = router.host_for(req["authority"])
        assert host is not None
        path, _, query = head.path.partition(b"?")
        assert host.scan(path, head, query) is got


class _Counting:
    """A compiled pattern whose `fullmatch` counts its calls."""

    calls = 0

    def __init__(self, rx: re.Pattern[bytes]) -> None:
        self._rx = rx

    def fullmatch(self, subject: bytes) -> re.Match[bytes] | None:
        _Counting.calls += 1
        return self._rx.fullmatch(subject)


def _routing_row(n: int = 10) -> list[list[dict[str, Any]]]:
    """The benchmark's shape: every rule the same path regex, a header and a query condition,
    the request matching the last."""
    table = [[_m(("RegularExpression", "/[0-9]+k"), headers=(("x", "Exact", f"other-{i}"),),
                 query=(("tier", "Exact", "gold"),))] for i in range(n - 1)]
    table.append([_m(("RegularExpression", "/[0-9]+k"),
                     headers=(("x", "RegularExpression", "acme-[0-9]+"),),
                     query=(("tier", "RegularExpression", "gold|platinum"),))])
    return table


def test_a_regex_shared_by_ten_rules_runs_once_per_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(match_module, "compile_safe", lambda p: _Counting(compile_safe(p)))
    router = _router(_routing_row())
    _Counting.calls = 0
    route = router.route(_head(_req("/1k", (("x", "acme-42"),), (("tier", "gold"),))))
    assert route is not None and route.name == "r9"
    assert _Counting.calls == 3  # path, header and query pattern: once each (was 3 + 2 * 10)
    host = router.host_for("h")
    assert host is not None and host.decision is not None
    _Counting.calls = 0
    head = _head(_req("/1k", (("x", "acme-42"),), (("tier", "gold"),)))
    assert host.scan(b"/1k", head, b"tier=gold") is route
    assert _Counting.calls == 12  # what trying the rules in turn runs: the path ten times


def test_a_regex_whose_matches_are_ruled_out_is_not_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(match_module, "compile_safe", lambda p: _Counting(compile_safe(p)))
    router = _router(_routing_row()[:-1])  # nine rules: a path regex, exact conditions
    _Counting.calls = 0
    assert router.route(_head(_req("/1k", (("x", "other-3"),), (("tier", "tin"),)))) is None
    assert _Counting.calls == 0  # the lookups left nothing for the pattern to decide
    route = router.route(_head(_req("/1k", (("x", "other-3"),), (("tier", "gold"),))))
    assert route is not None and route.name == "r3"
    assert _Counting.calls == 1


def test_the_headers_are_read_once_whatever_the_number_of_header_conditions() -> None:
    # Counted by how often the fields' names are hashed: a pass over the fields hashes each
    # name a few times (looked up in the host's names, kept); the compiled module (ADR 0052)
    # iterates a list without calling `__iter__`, so that cannot be what is counted.
    hashes = 0

    class Name(bytes):
        def __hash__(self) -> int:
            nonlocal hashes
            hashes += 1
            return bytes.__hash__(self)

    table = [[_m(headers=((n, "RegularExpression", f"v{i}"),))]
             for i in range(8) for n in ("x", "y")]
    router = _router(table)
    head = RequestHead(b"GET", b"/", b"h", b"http", [(Name(b"x"), b"v7"), (Name(b"y"), b"no")])
    route = router.route(head)
    assert route is not None and route.name == "r14"
    assert 0 < hashes <= 3 * 2  # at most three per field: one pass, not one per condition


def test_an_authority_is_looked_up_once_and_the_memo_is_bounded() -> None:
    router = Router(validate({"clusters": [{"name": "c"}], "route_tables": [
        {"name": "rt", "virtual_hosts": [
            {"name": "a", "domains": ["a.example"], "rules": [{"backends": [{"cluster": "c"}]}]},
        ]}]}).route_tables[0], 15000)
    assert router.route(_head(_req(authority="A.example:80"))) is not None
    assert router.route(_head(_req(authority="b.example"))) is None
    assert router.route(_head(_req(authority="b.example"))) is None  # remembered: still none
    for i in range(1000):
        router.route(_head(_req(authority=f"n{i}.example")))
    assert len(router._seen) <= 256  # noqa: SLF001
    long = "n" * 5000 + ".example"
    assert router.route(_head(_req(authority=long))) is None
    assert long.encode() not in router._seen  # noqa: SLF001  (the memo's size is bounded)
    assert router.route(_head(_req(authority="a.example"))) is not None


def test_the_first_candidate_that_holds_ends_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(match_module, "compile_safe", lambda p: _Counting(compile_safe(p)))
    table = [[_m(headers=(("x", "RegularExpression", f"v{i}-[0-9]+"),))] for i in range(200)]
    router = _router(table)
    _Counting.calls = 0
    route = router.route(_head(_req(headers=(("x", "v0-1"),))))
    assert route is not None and route.name == "r0"
    assert _Counting.calls == 1  # not the 199 patterns of the rules it outranks
    _Counting.calls = 0
    assert router.route(_head(_req(headers=(("x", "none"),)))) is None
    assert _Counting.calls == 200  # each distinct pattern once, as the scan would


def test_an_unchanged_host_keeps_its_decision_across_snapshots() -> None:
    raw = {"clusters": [{"name": "c"}], "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": n, "domains": [f"{n}.example"], "rules": [
            {"name": f"{n}-r", "matches": [{"headers": [{"name": "x", "value": "1"}]}],
             "backends": [{"cluster": "c"}]}]} for n in ("a", "b")]}]}
    first = Router(validate(raw).route_tables[0], 15000)
    raw["route_tables"][0]["virtual_hosts"][1]["rules"][0]["matches"][0]["headers"][0][  # type: ignore[index]
        "value"] = "2"
    cfg = validate(raw).route_tables[0]
    table = msgspec.structs.replace(cfg, virtual_hosts=[
        first.compiled.entries[0].vh, cfg.virtual_hosts[1]])
    second = Router(table, 15000, previous=first)
    a1, a2 = first.host_for("a.example"), second.host_for("a.example")
    b1, b2 = first.host_for("b.example"), second.host_for("b.example")
    assert a1 is a2 and a1 is not None and a1.decision is not None  # kept whole
    assert b1 is not b2 and b2 is not None and b2.decision is not None
    head = _head(_req(headers=(("x", "2"),), authority="b.example"))
    assert second.route(head) is not None and first.route(head) is None
