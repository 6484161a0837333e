"""Regular expressions the contract admits: ones the proxy can run in bounded time.

Why: route matches (and later authorization and rate-limit descriptors) take regular
expressions from configuration and run them on every request, against bytes a client chose.
Python's `re` backtracks: `(a+)+$`, `(a|a)*` or `.*.*.*x` take exponential or high-polynomial
time on a hostile path or header.  Envoy avoids this with RE2 (linear time); Tulle keeps the
stdlib engine (no new native dependency in the proxy) and instead admits only patterns whose
backtracking is bounded, compiled once per snapshot.  ADR 0016 records the rules; in short:

1. **RE2's feature set.**  No backreferences, lookahead / lookbehind or conditional groups
   (RE2 refuses them too, so a pattern written for Envoy or another mesh means the same here).
   ASCII only (requests are matched as bytes), at most 1,024 characters.
2. **Repetition of one character at a time.**  `*`, `+`, `?`, `{m,n}` apply to one character,
   class, `.` or an alternation of single characters (`(a|b)*`); a repeated group may only be
   optional (`(/v2)?`).  So nothing nests (no `(a+)+`): star height one.
3. **Commitment where it is free.**  A repetition whose characters cannot begin what follows it
   (`[0-9]+/`, `[^/]+` before `/` or the end) is compiled possessive: the engine never
   backtracks into it, and it matches exactly what it would have matched anyway.
4. **A budget for the rest.**  At most one repetition of unbounded count may need backtracking
   (`.*\\.jpg`), and at most `MAX_TAIL` (32) bytes may follow it: it re-runs what follows from
   every position it backtracks to.  A counted repeat is as long as its count: `[^y]{0,65535}`
   is "long" like `[^y]*` (ADR 0101: `a*a{0,65535}` was admitted and took 1.4 s on 64 KiB).
   The other choice points (alternatives that can begin with the same byte, optional groups
   that can be skipped or taken on the same byte, bounded counts that may backtrack) multiply:
   each combination may re-run what follows it.  When that includes scanning the subject --
   more than `MAX_TAIL` bytes follow the choice point, or a backtracking repetition precedes
   it -- the product is at most `MAX_SCAN_CHOICES` (4); otherwise at most `MAX_CHOICES` (256).
   (ADR 0021: with 256 choices next to one `.*`, `.*a?a?a?a?a?a?a?a?a` took 0.5 s on a 64 KiB
   header.)

A pattern meeting these runs in O(4 * 32 * n + 256 * m) steps at worst for a subject of n bytes
and a pattern of m (the first term only with a repetition that backtracks); typical route
patterns are linear with a small constant.  Every match is a *full* match (the whole
path or header value), as in Envoy's `safe_regex` and Gateway API implementations built on it.
`.` matches any byte, newline included (paths and header values have none; a percent-decoded
query value may): so a final `.*` always succeeds once reached, and `.*Mobile.*` is taken.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

_parser: Any = importlib.import_module("re._parser")  # stdlib internals (3.11-3.13), untyped
_compiler: Any = importlib.import_module("re._compiler")
_c: Any = importlib.import_module("re._constants")

MAX_PATTERN_CHARS = 1024
MAX_CHOICES = 256
"""Product of the backtracking choice points a pattern may have besides one unbounded one."""
MAX_SCAN_CHOICES = 4
"""The same product, counting the choice points each of whose combinations may re-scan the
subject (more than `MAX_TAIL` bytes after it, or a repetition that backtracks before it): the
cost of a match is about this many passes over the subject."""
MAX_TAIL = 32
"""Bytes that may follow the repetition that backtracks (it re-runs them from every position it
backtracks to, so a match costs up to this many steps per byte of subject), and the length past
which what follows a choice point counts as a scan of the subject."""
_LONG = MAX_TAIL + 1
"""Any length over `MAX_TAIL`: lengths are added up saturating here (a repeat of unbounded
count is `_LONG`)."""

_FORBIDDEN = {
    _c.GROUPREF: "backreferences are not supported",
    _c.GROUPREF_EXISTS: "conditional groups are not supported",
    _c.ASSERT: "lookahead and lookbehind are not supported",
    _c.ASSERT_NOT: "lookahead and lookbehind are not supported",
}
_SINGLE = {_c.LITERAL, _c.NOT_LITERAL, _c.IN, _c.ANY, _c.CATEGORY}
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT}
_ALL = (1 << 256) - 1
_LOCALE, _IGNORECASE, _DOTALL = int(re.LOCALE), int(re.IGNORECASE), int(re.DOTALL)
"""As plain ints: `int & RegexFlag` goes through `enum`, a Python call per test."""


def _bits(data: bytes) -> int:
    mask = 0
    for b in data:
        mask |= 1 << b
    return mask


_UPPER = _bits(bytes(range(65, 91)))
_LOWER = _UPPER << 32
_DIGIT = _bits(b"0123456789")
_SPACE = _bits(b" \t\n\r\x0b\x0c")
_WORD = _UPPER | _LOWER | _DIGIT | _bits(b"_")
_CATEGORIES = {
    _c.CATEGORY_DIGIT: _DIGIT, _c.CATEGORY_NOT_DIGIT: _ALL & ~_DIGIT,
    _c.CATEGORY_SPACE: _SPACE, _c.CATEGORY_NOT_SPACE: _ALL & ~_SPACE,
    _c.CATEGORY_WORD: _WORD, _c.CATEGORY_NOT_WORD: _ALL & ~_WORD,
}
"""What `\\d`, `\\s`, `\\w` and their negations match in a bytes pattern (ASCII)."""


def _lower(mask: int) -> int:
    """The bytes of `mask`, ASCII letters lower-cased (as a folding engine stores a set)."""
    return (mask & ~_UPPER) | ((mask & _UPPER) << 32)


def _matching_lower(mask: int) -> int:
    """The bytes whose lower-case form is in `mask` (what a folding engine accepts)."""
    return (mask & ~_UPPER) | ((mask & _LOWER) >> 32)


class UnsafePattern(ValueError):
    """A pattern the proxy refuses, with the reason (reported with the field's path)."""


class _Analysis:
    __slots__ = ("choices", "flags", "scan_choices", "state", "unbounded")

    def __init__(self, state: Any, flags: int) -> None:
        self.state = state
        self.flags = flags
        self.choices = 1
        self.scan_choices = 1
        """The product of the choice points with something of unbounded length after them."""
        self.unbounded = 0

    def choice(self, ways: int, tail: int) -> None:
        """A choice point with `ways` live continuations; `tail`: how many bytes (up to
        `_LONG`) each way may consume before the match ends (each way re-runs them)."""
        self.choices *= ways
        if tail > MAX_TAIL:
            self.scan_choices *= ways

    def check(self) -> None:
        """The budget (rule 4 of the module docstring), once the whole pattern is walked."""
        scans = self.choices if self.unbounded else self.scan_choices
        if scans > MAX_SCAN_CHOICES:
            raise UnsafePattern(f"more than {MAX_SCAN_CHOICES} ways to backtrack around a "
                                "repetition of unbounded count (alternatives that can begin "
                                "alike, optional groups, counted repeats whose characters can "
                                "also begin what follows): each way would scan the subject "
                                "again")

    def charset(self, item: Any, flags: int) -> int:
        """The bytes one single-character item accepts, as a 256-bit mask.

        Worked out from the parsed item (ADR 0101): trying all 256 bytes with the engine cost
        about 0.1 ms per item, so a 1,024-character pattern took 0.1 s to check and one route
        of 4,224 such patterns (what the API's counts allow) minutes of every proxy's event
        loop.  Only a locale-dependent item (`(?L)`) is still tried byte by byte."""
        if flags & _LOCALE:
            return self.tried(item, flags)
        op, av = item
        fold = flags & _IGNORECASE
        if op is _c.LITERAL or op is _c.NOT_LITERAL:
            mask = _matching_lower(_lower(1 << av)) if fold else 1 << av
            return mask if op is _c.LITERAL else _ALL & ~mask
        if op is _c.ANY:
            return _ALL if flags & _DOTALL else _ALL & ~(1 << 10)
        if op is _c.CATEGORY:
            return _CATEGORIES[av]
        # IN: literals and ranges (lower-cased when folding, as the engine stores them),
        # categories, and NEGATE first; a folding engine tests the lower-cased byte.
        negate = False
        mask = 0
        for member, arg in av:
            if member is _c.NEGATE:
                negate = True
            elif member is _c.LITERAL:
                mask |= _lower(1 << arg) if fold else 1 << arg
            elif member is _c.RANGE:
                bits = ((1 << (arg[1] + 1)) - 1) & ~((1 << arg[0]) - 1)
                mask |= _lower(bits) if fold else bits
            elif member is _c.CATEGORY:
                mask |= _CATEGORIES[arg]
            else:  # (not produced by the parser for bytes patterns; kept exact regardless)
                return self.tried(item, flags)
        if fold:
            mask = _matching_lower(mask)
        return _ALL & ~mask if negate else mask

    def tried(self, item: Any, flags: int) -> int:
        """The bytes one single-character item accepts, by trying each with the engine.

        The item is wrapped in a group setting exactly `flags`: the engine ORs the pattern's
        global flags into whatever it is given, which would undo a scoped `(?-s:.)`."""
        state = self.state
        inner = _parser.SubPattern(state, [item])
        scoped = (_c.SUBPATTERN, (None, flags & ~state.flags, state.flags & ~flags, inner))
        rx = _compiler.compile(_parser.SubPattern(state, [scoped]), 0)
        mask = 0
        for b in range(256):
            if rx.fullmatch(bytes((b,))) is not None:
                mask |= 1 << b
        return mask

    def single(self, body: list[Any], flags: int) -> int | None:
        """The charset of a repetition body that is one character, else None."""
        while len(body) == 1 and body[0][0] is _c.SUBPATTERN:
            _, add, delete, inner = body[0][1]
            flags = (flags | add) & ~delete
            body = list(inner)
        if len(body) == 1 and body[0][0] in _SINGLE:
            return self.charset(body[0], flags)
        return None

    def seq(self, items: Any, follow: int, tail: int, flags: int) -> tuple[int, int]:
        """Walk `items` right to left.  `follow`: the bytes that may come right after them
        (the empty set at the end: a full match); `tail`: the most bytes what follows them may
        consume (saturating at `_LONG`).  Returns the same two facts for the start of
        `items`."""
        data = items.data if hasattr(items, "data") else items
        for i in range(len(data) - 1, -1, -1):
            op, av = data[i]
            if op in _FORBIDDEN:
                raise UnsafePattern(_FORBIDDEN[op])
            if op in _SINGLE:
                follow = self.charset(data[i], flags)
                tail = min(tail + 1, _LONG)
            elif op is _c.AT:
                continue  # anchors are zero-width
            elif op is _c.SUBPATTERN:
                _, add, delete, inner = av
                follow, tail = self.seq(inner, follow, tail, (flags | add) & ~delete)
            elif op is _c.ATOMIC_GROUP:
                follow, tail = self.seq(av, follow, tail, flags)
            elif op is _c.BRANCH:
                firsts = 0
                longest = tail
                starts: list[int] = []
                for alt in av[1]:
                    f, t = self.seq(alt, follow, tail, flags)
                    starts.append(f)
                    firsts |= f
                    longest = max(longest, t)
                self.choice(_overlap(starts), longest)
                follow, tail = firsts, longest
            elif op in _REPEATS:
                follow, tail = self.repeat(data, i, follow, tail, flags)
            else:
                raise UnsafePattern(f"unsupported construct {op}")
            if self.choices > MAX_CHOICES:
                raise UnsafePattern(f"more than {MAX_CHOICES} ways to backtrack "
                                    "(alternatives, optional groups, counted repeats)")
        return follow, tail

    def repeat(self, data: list[Any], i: int, follow: int, tail: int,
               flags: int) -> tuple[int, int]:
        op, (lo, hi, body) = data[i]
        unbounded = hi is _c.MAXREPEAT
        # The most bytes this repetition and what follows it may consume: a counted repeat of
        # one character is as long as its count (`[^y]{0,65535}` is long like `[^y]*`).
        longest = _LONG if unbounded else min(tail + hi, _LONG)
        chars = self.single(list(body), flags)
        if chars is None:
            if hi != 1:
                raise UnsafePattern("only a single character, class or `.` may repeat; a "
                                    "group may only be optional (`(...)?`)")
            first, inner_tail = self.seq(body, follow, tail, flags)
            if lo == 0:
                # Taking the group and skipping it are both live only when the group can be
                # empty or begin with a byte that can also follow it.
                if first & follow or body.getwidth()[0] == 0:
                    self.choice(2, inner_tail)
                first |= follow
            return first, inner_tail
        if chars == _ALL and follow == 0 and unbounded:
            # `.*` at the end: once reached it takes the rest and the match has succeeded, so
            # it costs one scan in all and is no reason to refuse what comes before it.  (Not
            # a counted `.{0,n}`: that can stop short of the end, fail, and be re-run.)
            data[i] = (_c.POSSESSIVE_REPEAT, (lo, hi, body))
            return chars, tail
        if op is _c.POSSESSIVE_REPEAT or chars & follow == 0:
            # What follows cannot start with these characters: the only count that can lead
            # to a match is the longest, so commit to it (same matches, no backtracking).
            data[i] = (_c.POSSESSIVE_REPEAT, (lo, hi, body))
        elif unbounded:
            if tail > MAX_TAIL:
                raise UnsafePattern("a repetition that may backtrack (here its characters can "
                                    "also begin what follows) must not be followed by another "
                                    f"of unbounded length, nor by more than {MAX_TAIL} bytes "
                                    "(counted repeats count as their count): it re-runs what "
                                    "follows from every position it backtracks to")
            self.unbounded += 1
            if self.unbounded > 1:
                raise UnsafePattern("at most one unbounded repetition may backtrack (its "
                                    "characters can also begin what follows it)")
        else:
            self.choice(hi - lo + 1, tail)
        return (chars | follow) if lo == 0 else chars, longest


def _overlap(starts: list[int]) -> int:
    """How many alternatives can begin with one same byte (the live ways of a branch: those
    whose first bytes differ exclude each other after one byte)."""
    if len(starts) < 2:
        return 1
    return max(sum((f >> b) & 1 for f in starts) for b in range(256)) or 1


def compile_safe(pattern: str) -> re.Pattern[bytes]:
    """Compile `pattern` for full matches on bytes, or raise `UnsafePattern` saying why not."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePattern(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        raw = pattern.encode("ascii")
    except UnicodeEncodeError:
        raise UnsafePattern("must be ASCII (requests are matched as bytes)") from None
    try:
        parsed = _parser.parse(raw, _DOTALL)  # (an int: enum flags cost a call per test)
    except re.error as exc:
        raise UnsafePattern(f"not a regular expression: {exc}") from None
    flags = parsed.state.flags
    analysis = _Analysis(parsed.state, flags)
    analysis.seq(parsed, 0, 0, flags)
    analysis.check()
    rx: re.Pattern[bytes] = _compiler.compile(parsed, flags)
    return rx


def problem(pattern: str) -> str | None:
    """Why `pattern` is refused, or None when the proxy takes it (the validator's question)."""
    try:
        compile_safe(pattern)
    except UnsafePattern as exc:
        return str(exc)
    return None
