"""The matcher vocabulary: strings, headers, query parameters, methods, paths."""

from __future__ import annotations

import pytest

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.match import (
    HeaderMatcher,
    MethodMatcher,
    PathMatcher,
    QueryMatcher,
    conditions_of,
    first_query_value,
    string_matcher,
)
from tulle.proxyconfig.model import HeaderMatch, PathMatch, QueryParamMatch, RouteMatch
from tulle.proxyconfig.regex import UnsafePattern


def head(method: bytes = b"GET", path: bytes = b"/",
         headers: list[tuple[bytes, bytes]] | None = None) -> RequestHead:
    return RequestHead(method, path, b"h", b"http", headers or [])


@pytest.mark.parametrize(("kind", "value", "yes", "no"), [
    ("Exact", "abc", [b"abc"], [b"ab", b"abcd", b"ABC", b""]),
    ("Prefix", "ab", [b"ab", b"abc"], [b"a", b"xab", b"AB"]),
    ("Suffix", "bc", [b"bc", b"abc"], [b"bcd", b"b", b"BC"]),
    ("Contains", "b", [b"b", b"abc"], [b"", b"ac", b"B"]),
    ("RegularExpression", "[a-c]+", [b"a", b"cab"], [b"", b"abd", b"xa"]),  # a full match
])
def test_string_matchers(kind: str, value: str, yes: list[bytes], no: list[bytes]) -> None:
    m = string_matcher(kind, value)  # type: ignore[arg-type]
    assert [m.matches(s) for s in yes] == [True] * len(yes)
    assert [m.matches(s) for s in no] == [False] * len(no)


def test_string_matchers_ignore_ascii_case_when_asked() -> None:
    assert string_matcher("Exact", "AbC", ignore_case=True).matches(b"aBc")
    assert string_matcher("Prefix", "/API", ignore_case=True).matches(b"/api/x")
    assert string_matcher("Suffix", ".JPG", ignore_case=True).matches(b"a.jpg")
    assert string_matcher("Contains", "MoBiLe", ignore_case=True).matches(b"x mobile y")
    with pytest.raises(ValueError, match=r"\(\?i\)"):
        string_matcher("RegularExpression", "a", ignore_case=True)


def test_a_regex_the_contract_refuses_is_refused_here_too() -> None:
    with pytest.raises(UnsafePattern):
        string_matcher("RegularExpression", "(a+)+")


def test_config_values_are_matched_as_utf8() -> None:
    assert string_matcher("Exact", "caf\u00e9").matches("caf\u00e9".encode())


def test_header_names_are_case_insensitive_and_repeats_are_joined_with_commas() -> None:
    m = HeaderMatcher("X-Env", string_matcher("Exact", "a,b"))
    assert m.matches(head(headers=[(b"x-env", b"a"), (b"other", b"z"), (b"x-env", b"b")]), b"")
    assert not m.matches(head(headers=[(b"x-env", b"a")]), b"")
    assert HeaderMatcher("x-env", string_matcher("Exact", "a")).matches(
        head(headers=[(b"x-env", b"a")]), b"")


def test_an_absent_header_never_matches_a_value_and_invert_flips_both() -> None:
    value = HeaderMatcher("x", string_matcher("Exact", ""))
    assert not value.matches(head(), b"")
    assert value.matches(head(headers=[(b"x", b"")]), b"")  # present and empty
    inverted = HeaderMatcher("x", string_matcher("Exact", "1"), invert=True)
    assert inverted.matches(head(), b"") and inverted.matches(head(headers=[(b"x", b"2")]), b"")
    assert not inverted.matches(head(headers=[(b"x", b"1")]), b"")


def test_presence_alone() -> None:
    present = HeaderMatcher("x")
    assert present.matches(head(headers=[(b"x", b"anything")]), b"")
    assert not present.matches(head(headers=[(b"y", b"1")]), b"")
    absent = HeaderMatcher("x", invert=True)
    assert absent.matches(head(), b"") and not absent.matches(head(headers=[(b"x", b"")]), b"")


def test_query_names_are_exact_values_decoded_first_value_wins() -> None:
    q = QueryMatcher("Mode", string_matcher("Exact", "a b"))
    assert q.matches(head(), b"Mode=a%20b")
    assert q.matches(head(), b"x=1&Mode=a%20b&Mode=zzz")
    assert not q.matches(head(), b"Mode=zzz&Mode=a%20b")  # the first value is the one
    assert not q.matches(head(), b"mode=a%20b")  # names are case-sensitive
    assert not q.matches(head(), b"Mode=a+b")  # `+` is not a space outside HTML forms
    assert QueryMatcher("a b", string_matcher("Exact", "1")).matches(head(), b"a%20b=1")
    assert not q.matches(head(), b"")


def test_query_parameters_without_a_value_and_presence() -> None:
    assert first_query_value(b"flag&x=1", b"flag") == b""
    assert first_query_value(b"x=1", b"flag") is None
    assert QueryMatcher("flag").matches(head(), b"flag")
    assert QueryMatcher("flag", invert=True).matches(head(), b"other")
    assert first_query_value(b"bad=%zz", b"bad") == b"%zz"  # a malformed escape stays as sent


def test_methods_are_exact_and_case_sensitive() -> None:
    m = MethodMatcher("POST")
    assert m.matches(head(b"POST"), b"") and not m.matches(head(b"post"), b"")
    assert not m.matches(head(b"GET"), b"")


def test_path_matchers() -> None:
    prefix = PathMatcher(PathMatch(value="/api/"))
    assert [prefix.matches(p) for p in (b"/api", b"/api/", b"/api/x", b"/apix", b"/")] == [
        True, True, True, False, False]
    assert PathMatcher(PathMatch(value="/")).matches(b"/anything")
    exact = PathMatcher(PathMatch(type="Exact", value="/a"))
    assert exact.matches(b"/a") and not exact.matches(b"/a/")
    rx = PathMatcher(PathMatch(type="RegularExpression", value="/v[0-9]+/.*"))
    assert rx.matches(b"/v2/x") and not rx.matches(b"/v2") and not rx.matches(b"/x/v2/x")


def test_a_route_match_compiles_to_its_conditions_cheapest_first() -> None:
    cond = conditions_of(RouteMatch(
        headers=[HeaderMatch(name="x", value="1")],
        query_params=[QueryParamMatch(type="RegularExpression", name="q", value="[0-9]+")],
        method="PUT"))
    assert [type(c).__name__ for c in cond] == ["MethodMatcher", "QueryMatcher", "HeaderMatcher"]
    ok = head(b"PUT", headers=[(b"x", b"1")])
    assert all(c.matches(ok, b"q=42") for c in cond)
    assert not all(c.matches(ok, b"q=4x") for c in cond)
    assert conditions_of(RouteMatch()) == ()


def test_hostile_heads_cost_one_pass() -> None:
    """A head at the proxy's limits (100 fields of a 64 KiB section, all with the matched
    name) against a regex header matcher and a long query: each finishes, none matches."""
    value = b"a" * 640
    many = head(headers=[(b"x", value)] * 100)
    rx = HeaderMatcher("x", string_matcher("RegularExpression", "(a|,)*b"))
    assert not rx.matches(many, b"")
    assert HeaderMatcher("x", string_matcher("Contains", "b")).matches(many, b"") is False
    query = b"&".join([b"q=%61" * 8] * 1000)
    assert QueryMatcher("q", string_matcher("RegularExpression", "a*b")).matches(
        head(), query) is False
