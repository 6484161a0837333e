"""A virtual host's matches compiled into one decision: each distinct condition tested at most
once per request, exact values looked up rather than compared one by one.

Why: trying a host's matches one after another re-runs every condition they share.  The
routing benchmark (issue 8: ten rules, each a path regular expression, a header and a query
condition, the request matching the last) ran the same path regex ten times, the same header
regex four times and scanned the header list ten times: 8-12 µs per request against 2 µs
for one rule.  Gateway API precedence is unchanged: the host's matches stay sorted by it
(`CompiledMatch.sort_key`), and the route is still that of the first match all of whose
conditions hold.  Only how that first match is found changes:

* Match *i* of the sorted list is bit *i* of an integer; `candidates` starts with every bit
  and each condition that fails clears the bits of the matches that require it.  The answer
  is the lowest bit left (the first in precedence order), or no route when none is.
* Conditions are deduplicated per host (the same subject, matcher, value and inversion is one
  test, whatever number of matches require it) and a test runs only while some candidate
  still requires it (`candidates & mask`): once cheaper tests have ruled its matches out, a
  regular expression is never run.
* Exact conditions on one subject (the method, an Exact path, a header or query parameter
  compared for equality, case-sensitively, not inverted) are one dict lookup of the request's
  value → the matches whose every such condition on that subject equals it.  Path prefixes
  are one lookup per distinct prefix length (a segment boundary there, then the dict).
* The request's header values are collected once, for the names the host tests only, in one
  pass over the fields (repeated fields joined with `,` as `HeaderMatcher` does); the query
  string is split once (`match.query_params`).

Cheap tests go first (lookups), then regular expressions and other string matchers.  No new
regex is compiled here: tests are the admitted, precompiled matchers of `match.py` (ADR 0016,
0021 budget), each run at most once per request instead of once per match.  Built once per
compiled host, so an unchanged host keeps its decision across snapshots (ADR 0022).  ADR 0027.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.routing.match import (
    AuthorityMatcher,
    Condition,
    Exact,
    HeaderMatcher,
    MethodMatcher,
    QueryMatcher,
    Regex,
    StringMatcher,
    query_params,
)

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import CompiledMatch, Route

Test = Callable[[bytes], Any]
"""A string test: truthy when the value matches (a bound `fullmatch` for regexes)."""
_NO_VALUES: dict[bytes, bytes] = {}


class _Tests:
    """Distinct general tests on one kind of subject, in first-seen order, with their masks."""

    __slots__ = ("keys", "out")

    def __init__(self) -> None:
        self.keys: dict[tuple[object, ...], int] = {}
        self.out: list[list[Any]] = []

    def add(self, name: bytes, value: StringMatcher | None, invert: bool, bit: int) -> None:
        key = (name, None if value is None else (type(value), value.value, value.ignore_case),
               invert)
        at = self.keys.get(key)
        if at is None:
            self.keys[key] = len(self.out)
            test: Test | None = None
            if isinstance(value, Regex):
                test = value.full
            elif value is not None:
                test = value.matches
            self.out.append([name, bit, test, invert])
        else:
            self.out[at][1] |= bit

    def frozen(self, every: int) -> tuple[tuple[bytes, int, int, Test | None, bool], ...]:
        """(subject name, mask, keep = every bit but the mask's, test, invert) each."""
        return tuple((n, m, every & ~m, t, inv) for n, m, t, inv in self.out)


class _Groups:
    """Exact conditions by subject name: per name, each match's required values."""

    __slots__ = ("by_name",)

    def __init__(self) -> None:
        self.by_name: dict[bytes, dict[int, set[bytes]]] = {}

    def add(self, name: bytes, value: bytes, bit: int) -> None:
        self.by_name.setdefault(name, {}).setdefault(bit, set()).add(value)

    def frozen(self, every: int) -> tuple[tuple[bytes, int, dict[bytes, int]], ...]:
        """(subject name, keep, value → the matches that hold with it) each; a match requiring
        two different values of one subject holds with none."""
        out = []
        for name, wants in self.by_name.items():
            mask = 0
            holds: dict[bytes, int] = {}
            for bit, values in wants.items():
                mask |= bit
                if len(values) == 1:
                    v = next(iter(values))
                    holds[v] = holds.get(v, 0) | bit
            out.append((name, every & ~mask, holds))
        return tuple(out)


def _exact(value: StringMatcher | None, invert: bool) -> bytes | None:
    """The value of a plain exact comparison (groupable into a lookup), else None."""
    if type(value) is Exact and not value.ignore_case and not invert:
        return value.value
    return None


class Decision:
    """The compiled decision of one virtual host (see the module docstring)."""

    __slots__ = ("authority", "every", "exact_paths", "header_groups", "header_mask",
                 "header_names", "header_tests", "method", "path_tests", "prefixes",
                 "query_groups", "query_mask", "query_tests", "routes")

    def __init__(self, matches: Sequence[CompiledMatch]) -> None:
        self.routes: tuple[Route, ...] = tuple(m.route for m in matches)
        every = self.every = (1 << len(matches)) - 1
        methods = _Groups()
        paths = _Groups()
        prefixes: dict[int, dict[bytes, int]] = {}
        prefix_mask = 0
        path_tests: dict[str, list[Any]] = {}
        headers, queries = _Groups(), _Groups()
        header_tests, query_tests, authority = _Tests(), _Tests(), _Tests()
        header_mask = query_mask = 0
        for i, m in enumerate(matches):
            bit = 1 << i
            p = m.path
            if p.exact is not None:
                paths.add(b"", p.exact, bit)
            elif p.prefix is not None:
                if p.prefix != b"/":
                    by = prefixes.setdefault(len(p.prefix), {})
                    by[p.prefix] = by.get(p.prefix, 0) | bit
                    prefix_mask |= bit
            else:
                assert p.regex is not None
                path_tests.setdefault(p.value, [p.regex.full, 0])[1] |= bit
            for c in m.conditions:
                header_mask, query_mask = self._add(
                    c, bit, methods, headers, queries, header_tests, query_tests, authority,
                    header_mask, query_mask)
        g = methods.frozen(every)
        self.method = (g[0][1], g[0][2]) if g else None
        g = paths.frozen(every)
        self.exact_paths = (g[0][1], g[0][2]) if g else None
        self.prefixes = ((every & ~prefix_mask, tuple(sorted(prefixes.items())))
                         if prefixes else None)
        self.path_tests = tuple((mask, every & ~mask, test)
                                for test, mask in path_tests.values())
        self.header_groups = headers.frozen(every)
        self.header_tests = header_tests.frozen(every)
        self.header_names = frozenset(headers.by_name) | {t[0] for t in self.header_tests}
        self.header_mask = header_mask
        self.query_groups = queries.frozen(every)
        self.query_tests = query_tests.frozen(every)
        self.query_mask = query_mask
        self.authority = authority.frozen(every)

    @staticmethod
    def _add(c: Condition, bit: int, methods: _Groups, headers: _Groups, queries: _Groups,
             header_tests: _Tests, query_tests: _Tests, authority: _Tests, header_mask: int,
             query_mask: int) -> tuple[int, int]:
        if isinstance(c, MethodMatcher):
            methods.add(b"", c.method, bit)
        elif isinstance(c, AuthorityMatcher):
            authority.add(b"", c.value, c.invert, bit)
        elif isinstance(c, HeaderMatcher):
            header_mask |= bit
            v = _exact(c.value, c.invert)
            if v is not None:
                headers.add(c.name, v, bit)
            else:
                header_tests.add(c.name, c.value, c.invert, bit)
        elif isinstance(c, QueryMatcher):
            query_mask |= bit
            v = _exact(c.value, c.invert)
            if v is not None:
                queries.add(c.name, v, bit)
            else:
                query_tests.add(c.name, c.value, c.invert, bit)
        else:  # a condition kind this module does not know would be silently ignored
            raise TypeError(f"no decision for condition {type(c).__name__}")
        return header_mask, query_mask

    def find(self, path: bytes, head: RequestHead, query: bytes) -> Route | None:
        c = self.every
        g = self.method
        if g is not None:
            c &= g[0] | g[1].get(head.method, 0)
        g = self.exact_paths
        if g is not None:
            c &= g[0] | g[1].get(path, 0)
        pre = self.prefixes
        if pre is not None and c & ~pre[0]:
            c &= pre[0] | _prefix_hits(path, pre[1])
        values = _NO_VALUES
        if c & self.header_mask:
            values = _header_values(head.headers, self.header_names)
            for name, keep, holds in self.header_groups:
                c &= keep | holds.get(values.get(name), 0)  # type: ignore[arg-type]
        params = _NO_VALUES
        if c & self.query_mask:
            params = query_params(query)
            for name, keep, holds in self.query_groups:
                c &= keep | holds.get(params.get(name), 0)  # type: ignore[arg-type]
        if not c:
            return None
        for mask, keep, full in self.path_tests:
            if c & mask and full(path) is None:
                c &= keep
        # `_holds` written out (a call per test was a fifth of the time of this function)
        for name, mask, keep, test, invert in self.header_tests:
            if c & mask:
                v = values.get(name)
                ok = invert if v is None else (test is None or bool(test(v))) is not invert
                if not ok:
                    c &= keep
        for name, mask, keep, test, invert in self.query_tests:
            if c & mask:
                v = params.get(name)
                ok = invert if v is None else (test is None or bool(test(v))) is not invert
                if not ok:
                    c &= keep
        for _, mask, keep, test, invert in self.authority:
            if c & mask and not _holds(head.authority or None, test, invert):
                c &= keep
        if not c:
            return None
        return self.routes[(c & -c).bit_length() - 1]


def _holds(value: bytes | None, test: Test | None, invert: bool) -> bool:
    """A general condition on a subject's value (None: absent), as `HeaderMatcher` has it."""
    if value is None:
        return invert
    return (test is None or bool(test(value))) is not invert


def _prefix_hits(path: bytes, by_length: tuple[tuple[int, dict[bytes, int]], ...]) -> int:
    """The prefix matches whose (normalised, not `/`) prefix is `path` up to a segment end."""
    hits = 0
    n = len(path)
    for length, holds in by_length:
        if length > n:
            break
        if length == n or path[length] == 47:  # "/"
            hits |= holds.get(path[:length], 0)
    return hits


def _header_values(headers: Headers, names: frozenset[bytes]) -> dict[bytes, bytes]:
    """The value of each field named in `names` that the request has, fields sent several
    times joined with `,` (RFC 9110 section 5.3): one pass over the fields."""
    out: dict[bytes, bytes] = {}
    more: dict[bytes, list[bytes]] | None = None
    for n, v in headers:
        if n in names:
            if n not in out:
                out[n] = v
            else:
                if more is None:
                    more = {}
                seen = more.get(n)
                if seen is None:
                    more[n] = [out[n], v]
                else:
                    seen.append(v)
    if more is not None:
        for n, seen in more.items():
            out[n] = b",".join(seen)
    return out
