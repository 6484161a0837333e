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
  regular expression is never run.  A host with few such general tests (`_FLAT_MAX`) runs
  them in one flat loop; one with more walks the candidates in precedence order, running a
  candidate's tests (each at most once per request, remembered) until one fails -- ruling out
  every match that requires it -- or all hold: then that candidate wins, and the tests of the
  matches it outranks are never run (as when the matches were tried one by one).
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
from typing import TYPE_CHECKING, Any, Final

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.routing.match import (
    AuthorityMatcher,
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
"""A test of a present value: truthy when it holds (a bound `fullmatch` for regexes)."""
_NO_VALUES: Final[dict[bytes, bytes]] = {}
_FLAT_MAX: Final = 8
"""Up to this many general tests in a host are run in one flat loop, each once while some
candidate requires it; with more, candidates are walked in precedence order, so the first
that holds ends the search however many tests the matches it outranks have."""
_TODO: Final = object()
"""A test not run yet for this request."""


PATH: Final = 0
HEADER: Final = 1
QUERY: Final = 2
AUTHORITY: Final = 3
"""What a general test reads: the path, a header's value, a query parameter's, the authority."""


class _Tests:
    """The distinct general tests of a host, in first-seen order, and each match's."""

    __slots__ = ("keys", "of", "out")

    def __init__(self) -> None:
        self.keys: dict[tuple[object, ...], int] = {}
        self.out: list[list[Any]] = []
        self.of: dict[int, list[int]] = {}
        """Match index → its tests (indices into `out`), in the order added."""

    def add(self, kind: int, name: bytes, value: StringMatcher | None, invert: bool,
            i: int) -> None:
        key = (kind, name,
               None if value is None else (type(value), value.value, value.ignore_case), invert)
        at = self.keys.get(key)
        if at is None:
            at = self.keys[key] = len(self.out)
            test: Test = _present if value is None else (
                value.full if isinstance(value, Regex) else value.matches)
            if invert:
                test = _negated(test)
            self.out.append([kind, name, test, invert, 0])  # absent: holds when inverted
        self.out[at][4] |= 1 << i
        self.of.setdefault(i, []).append(at)

    def frozen(self, every: int) -> tuple[tuple[int, bytes, Test, bool, int, int], ...]:
        """(kind, subject name, test of a present value, whether an absent one holds,
        keep = every bit but those requiring it, mask = those bits) each."""
        return tuple((k, n, t, absent, every & ~m, m) for k, n, t, absent, m in self.out)


def _present(value: bytes) -> bool:
    return True


def _negated(test: Test) -> Test:
    def negated(value: bytes) -> bool:
        return not test(value)
    return negated


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

    __slots__ = ("every", "exact_paths", "header_groups", "header_mask", "header_names",
                 "method", "pending", "prefixes", "query_groups", "query_mask", "routes",
                 "tests")

    def __init__(self, matches: Sequence[CompiledMatch]) -> None:
        self.routes: tuple[Route, ...] = tuple(m.route for m in matches)
        every = self.every = (1 << len(matches)) - 1
        methods = _Groups()
        paths = _Groups()
        prefixes: dict[int, dict[bytes, int]] = {}
        prefix_mask = 0
        headers, queries = _Groups(), _Groups()
        tests = _Tests()
        header_mask = query_mask = 0
        for i, m in enumerate(matches):
            bit = 1 << i
            for c in m.conditions:
                if isinstance(c, MethodMatcher):
                    methods.add(b"", c.method, bit)
                elif isinstance(c, AuthorityMatcher):
                    tests.add(AUTHORITY, b"", c.value, c.invert, i)
                elif isinstance(c, HeaderMatcher | QueryMatcher):
                    header = isinstance(c, HeaderMatcher)
                    if header:
                        header_mask |= bit
                    else:
                        query_mask |= bit
                    v = _exact(c.value, c.invert)
                    if v is not None:
                        (headers if header else queries).add(c.name, v, bit)
                    else:
                        tests.add(HEADER if header else QUERY, c.name, c.value, c.invert, i)
                else:  # a condition this module does not know would be silently ignored
                    raise TypeError(f"no decision for condition {type(c).__name__}")
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
                tests.add(PATH, b"", p.regex, False, i)
        g = methods.frozen(every)
        self.method = (g[0][1], g[0][2]) if g else None
        g = paths.frozen(every)
        self.exact_paths = (g[0][1], g[0][2]) if g else None
        self.prefixes = ((every & ~prefix_mask, tuple(sorted(prefixes.items())))
                         if prefixes else None)
        self.header_groups = headers.frozen(every)
        self.header_mask = header_mask
        self.query_groups = queries.frozen(every)
        self.query_mask = query_mask
        self.tests = tests.frozen(every)
        """The distinct general tests (regular expressions, inverted or other string tests)."""
        self.pending = tuple(tuple(tests.of.get(i, ())) for i in range(len(matches)))
        """Per match, the general tests it requires, run (once each) only for a candidate, in
        the order of its conditions (query, headers: `conditions_of`), its path last."""
        self.header_names = frozenset(headers.by_name) | {
            t[1] for t in self.tests if t[0] == HEADER}

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
        # The candidates in precedence order: the first whose general tests all pass wins.
        # A test runs once (`done`); one that fails rules out every match requiring it.
        if not c:
            return None
        tests = self.tests
        if len(tests) <= _FLAT_MAX:  # few: each once, in a flat loop (no candidate walk)
            for kind, name, test, absent, keep, mask in tests:
                if c & mask:
                    v = (path if kind == PATH else values.get(name) if kind == HEADER
                         else params.get(name) if kind == QUERY else head.authority or None)
                    if not (absent if v is None else test(v)):
                        c &= keep
                        if not c:
                            return None
            return self.routes[(c & -c).bit_length() - 1]
        pending = self.pending
        todo = _TODO
        done: list[object] = [todo] * len(tests)
        while c:
            i = (c & -c).bit_length() - 1
            for t in pending[i]:
                ok = done[t]
                if ok is todo:
                    kind, name, test, absent, _, _ = tests[t]
                    v = (path if kind == PATH else values.get(name) if kind == HEADER
                         else params.get(name) if kind == QUERY else head.authority or None)
                    ok = done[t] = absent if v is None else test(v)  # truthy: holds
                if not ok:
                    c &= tests[t][4]
                    break
            else:
                return self.routes[i]
        return None


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
