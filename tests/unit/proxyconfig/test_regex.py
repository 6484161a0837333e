"""Regular expressions the contract admits: bounded backtracking, the same matches as `re`."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.proxyconfig.regex import UnsafePattern, compile_safe, problem

TAKEN = [
    r"/api/v[0-9]+/.*",
    r".*\.(jpg|png)",
    r"/users/[^/]+/orders/[0-9]+",
    r"(?i)/Docs/.*",
    r"/api(/v2)?/items",
    r"(a|b)*c",
    r"v\d{1,3}",
    r"[a-z]+-[0-9]+",
    r"^/exact$",
    r"a*?b",
    r"x*+y",
    r".*Mobile.*",
    r"/a/.*/b(/.*)?",
    # Choice points that cannot multiply a scan: alternatives that begin differently, an
    # optional group that cannot begin with what follows, choices before a final `.*`.
    r".*\.(jpg|jpeg|png|gif|css|js)",
    r"/x(/b)?(/c)?(/d)?/.*",
    r"[^/]+(-v2)?/items",
    "(ab|ba|bb|aa)" * 5,
]

REFUSED = {
    r"(a+)+$": "only a single character",
    r"(ab)*": "only a single character",
    r"(a|ab)*": "only a single character",
    r".*.*x": "must not be followed by another of unbounded length",
    r".*a.*b": "must not be followed by another of unbounded length",
    r"[a-z]*[a-z]*!": "must not be followed by another of unbounded length",
    r"(\w+)\1": "backreferences",
    r"(?=a)b": "lookahead and lookbehind",
    r"(?<!a)b": "lookahead and lookbehind",
    r"(a)?(?(1)b|c)": "conditional groups",
    "/caf\u00e9": "must be ASCII",
    r"(": "not a regular expression",
    r"[": "not a regular expression",
    "a" * 1025: "longer than 1024",
    "(ab|ba|bb|aa)" * 9: "ways to backtrack",
    # Admitted before (256 choices next to an unbounded part); measured 150-540 ms per
    # full match on a 64 KiB subject of `a`s ending in `b` (one request stalls the proxy).
    r".*a{0,255}a": "ways to backtrack",
    r".*a?a?a?a?a?a?a?a?a": "ways to backtrack",
    r".*(a|aa)(a|aa)(a|aa)(a|aa)(a|aa)(a|aa)(a|aa)(a|aa)b": "ways to backtrack",
    r"a?a?a?a?a?a?a?a?[a-z]*b": "ways to backtrack",
}


@pytest.mark.parametrize("pattern", TAKEN)
def test_route_patterns_people_write_are_taken(pattern: str) -> None:
    assert problem(pattern) is None


@pytest.mark.parametrize(("pattern", "why"), list(REFUSED.items()), ids=list(range(len(REFUSED))))
def test_patterns_that_could_run_away_or_mean_something_else_are_refused(
        pattern: str, why: str) -> None:
    with pytest.raises(UnsafePattern, match=re.escape(why)):
        compile_safe(pattern)


def test_matches_are_full_matches_on_bytes() -> None:
    rx = compile_safe(r"/api/v[0-9]+/.*")
    assert rx.fullmatch(b"/api/v12/x") and rx.fullmatch(b"/api/v1/")
    assert not rx.fullmatch(b"/api/v12") and not rx.fullmatch(b"/api/vx/")
    assert compile_safe(r"(?i)/docs").fullmatch(b"/DOCS")
    assert compile_safe(r"a.b").fullmatch(b"a\nb")  # `.` is any byte


@pytest.mark.parametrize("pattern", TAKEN)
def test_taken_patterns_finish_on_hostile_64k_subjects(pattern: str) -> None:
    """The subjects that make backtracking engines run away: long runs of what the pattern's
    repeats accept, ending in a byte that fails the match.  Each finishes (pytest-timeout
    would catch a runaway); none matches."""
    rx = compile_safe(pattern)
    for filler in (b"a", b"/", b"0", b".", b"-", b"/a"):
        assert rx.fullmatch(filler * 32768 + b"\n") is None


SAFE_PIECES = st.sampled_from(["a", "b", "/", "[ab]", "[^/]", ".", "(a|b)", "[0-9]", "x",
                               "a*", "b+", "[ab]*", "[^/]+", ".*", "(/v2)?", "[0-9]{1,3}"])


@settings(max_examples=300, deadline=None)
@given(st.lists(SAFE_PIECES, min_size=1, max_size=6),
       st.lists(st.sampled_from([b"a", b"b", b"/", b"0", b"x", b"v2", b"\n"]), max_size=12).map(b"".join))
def test_a_taken_pattern_matches_exactly_what_re_matches(pieces: list[str], subject: bytes) -> None:
    """Repeats committed to (compiled possessive) never change what matches."""
    pattern = "".join(pieces)
    try:
        safe = compile_safe(pattern)
    except UnsafePattern:
        return
    plain = re.compile(pattern.encode(), re.DOTALL)
    assert (safe.fullmatch(subject) is None) == (plain.fullmatch(subject) is None), pattern
