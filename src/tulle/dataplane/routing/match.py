"""One matcher vocabulary for everything that selects requests: routes now, authorization and
rate-limit descriptors later.

Why one: three features each with their own idea of "header equals" or "path regex" would
disagree at the edges (case, repeated headers, percent-encoding), and an operator cannot tell
which rule applies.  Every matcher here is built once per snapshot from typed config, holds
only precompiled values, and runs on the request as the proxy has it: a `RequestHead`, bytes.

* **String matchers** (Envoy's `StringMatcher`): exact, prefix, suffix, contains (each
  optionally ASCII case-insensitive) and full-match regular expressions, only patterns the
  contract admits (`tulle.proxyconfig.regex`: bounded backtracking, ADR 0016).
* **Header matchers**: the name case-insensitively; a header sent several times is matched as
  its values joined with `,` (RFC 9110 section 5.3; Envoy does the same); a value matcher,
  or presence alone; `invert` negates the result (a missing header then matches).  `host`
  is the request's authority (`Host` / `:authority`, kept apart from the fields by the
  codecs); framing and hop-by-hop fields never reach routing, and the contract refuses
  matches on them (`proxyconfig.validate`, ADR 0021).
* **Query-parameter matchers**: the name case-sensitively and exactly; names and values are
  percent-decoded before comparing; a parameter sent several times is matched by its first
  value (Gateway API's recommendation); a parameter without `=` has the value "".
* **Method matcher**: the method exactly (methods are case-sensitive, RFC 9110 section 9.1).

A condition's `matches(head, query)` takes the head and the query string (the bytes after the
first `?` of the path, b"" without one), split off once per request by the caller.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from tulle.dataplane.exchange import RequestHead
from tulle.proxyconfig.model import HeaderMatch, PathMatch, QueryParamMatch, RouteMatch
from tulle.proxyconfig.regex import compile_safe

StringKind = Literal["Exact", "Prefix", "Suffix", "Contains", "RegularExpression"]


@mypyc_attr(allow_interpreted_subclasses=True)  # authz's `_Any` subclasses it (ADR 0052)
class StringMatcher:
    """Matches one bytes value.  Subclasses hold the compiled value; `matches` is the test."""

    __slots__ = ("ignore_case", "value")

    def __init__(self, value: bytes, ignore_case: bool = False) -> None:
        self.value = value.lower() if ignore_case else value
        self.ignore_case = ignore_case

    def matches(self, subject: bytes) -> bool:
        raise NotImplementedError


class Exact(StringMatcher):
    __slots__ = ()

    def matches(self, subject: bytes) -> bool:
        return (subject.lower() if self.ignore_case else subject) == self.value


class Prefix(StringMatcher):
    __slots__ = ()

    def matches(self, subject: bytes) -> bool:
        return (subject.lower() if self.ignore_case else subject).startswith(self.value)


class Suffix(StringMatcher):
    __slots__ = ()

    def matches(self, subject: bytes) -> bool:
        return (subject.lower() if self.ignore_case else subject).endswith(self.value)


class Contains(StringMatcher):
    __slots__ = ()

    def matches(self, subject: bytes) -> bool:
        return self.value in (subject.lower() if self.ignore_case else subject)


class Regex(StringMatcher):
    """A full match of an admitted pattern (case: use `(?i)` in the pattern)."""

    __slots__ = ("full",)

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern.encode("ascii", "replace"))
        rx: re.Pattern[bytes] = compile_safe(pattern)  # raises UnsafePattern
        self.full = rx.fullmatch
        """The compiled pattern's bound `fullmatch` (a match or None), for callers that run
        it directly (`routing/decide.py`)."""

    def matches(self, subject: bytes) -> bool:
        return self.full(subject) is not None


_KINDS: Final[dict[str, type[StringMatcher]]] = {
    "Exact": Exact, "Prefix": Prefix, "Suffix": Suffix, "Contains": Contains}


def string_matcher(kind: StringKind, value: str, ignore_case: bool = False) -> StringMatcher:
    """The matcher for one typed string condition (config values are UTF-8 on the wire)."""
    if kind == "RegularExpression":
        if ignore_case:
            raise ValueError("a regular expression states its own case rule: use (?i)")
        return Regex(value)
    return _KINDS[kind](value.encode(), ignore_case)


@mypyc_attr(allow_interpreted_subclasses=True)  # a compiled base of `HeaderMatcher`
class Condition:
    """One condition on a request besides its path."""

    __slots__ = ()

    def matches(self, head: RequestHead, query: bytes) -> bool:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)  # authz's `_AnyHeader` subclasses it
class HeaderMatcher(Condition):
    """A header condition: `value` None tests presence alone."""

    __slots__ = ("invert", "name", "value")

    def __init__(self, name: str, value: StringMatcher | None = None,
                 invert: bool = False) -> None:
        self.name = name.lower().encode("ascii")
        self.value = value
        self.invert = invert

    def matches(self, head: RequestHead, query: bytes) -> bool:
        name = self.name
        found: bytes | None = None
        more: list[bytes] | None = None
        for n, v in head.headers:
            if n == name:
                if found is None:
                    found = v
                elif more is None:
                    more = [found, v]
                else:
                    more.append(v)
        if found is None:
            return self.invert
        if more is not None:
            found = b",".join(more)
        value = self.value
        return (value is None or value.matches(found)) is not self.invert

    @classmethod
    def of(cls, m: HeaderMatch) -> HeaderMatcher:
        value = string_matcher(m.type, m.value)
        if m.name.lower() == "host":
            return AuthorityMatcher(m.name, value)
        return cls(m.name, value)


class AuthorityMatcher(HeaderMatcher):
    """A `host` header condition: the request's authority (HTTP/1 `Host`, HTTP/2
    `:authority`), which the codecs keep as the head's `authority`, not as a header field --
    a search of the fields would never find it."""

    __slots__ = ()

    def matches(self, head: RequestHead, query: bytes) -> bool:
        found = head.authority
        if not found:
            return self.invert
        value = self.value
        return (value is None or value.matches(found)) is not self.invert


_PERCENT: Final = 37
"""`%` as an int: `37 in part` is a `memchr`, `b"%" in part` goes through the buffer protocol
and costs about seven times as much (0.17 against 0.024 µs here), twice per parameter."""


def parse_query(query: bytes) -> dict[bytes, bytes]:
    """Each parameter's percent-decoded name -> its first value, percent-decoded.  `+` is left
    as it is (it means a space only in HTML form encoding); `;` is no separator (as Envoy)."""
    out: dict[bytes, bytes] = {}
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if _PERCENT in key:
            key = _unquote(key)
        if key not in out:
            out[key] = _unquote(value) if _PERCENT in value else value
    return out


def _unquote(raw: bytes) -> bytes:
    """Percent-decoding, with `urllib.parse` imported at the first escape it meets: a proxy
    whose routes never see one does not hold it (ADR 0068)."""
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(raw)


class _LastQuery:
    """The parameters of the query last asked about.  The router hands every condition of a
    request the same `query` object, so a host trying many query conditions splits it once
    (a 64 KiB query cost 8-15 ms per condition when each split it again).  Keyed by identity:
    bytes are immutable and the entry holds its key alive, so a hit is always right."""

    __slots__ = ("params", "query")

    def __init__(self) -> None:
        self.query = b""
        self.params: dict[bytes, bytes] = {}


_last: Final = _LastQuery()


def first_query_value(query: bytes, name: bytes) -> bytes | None:
    """The percent-decoded value of the first parameter whose decoded name is `name`, else
    None (`parse_query`, once per query object)."""
    if not query:
        return None
    return query_params(query).get(name)


_NO_PARAMS: Final[dict[bytes, bytes]] = {}


def query_params(query: bytes) -> dict[bytes, bytes]:
    """`parse_query(query)`, split once per query object (`_LastQuery`); {} for b"".  The
    result is shared: read it, never change it."""
    if not query:
        return _NO_PARAMS
    last = _last
    if query is not last.query:
        last.params = parse_query(query)
        last.query = query
    return last.params


class QueryMatcher(Condition):
    __slots__ = ("invert", "name", "value")

    def __init__(self, name: str, value: StringMatcher | None = None,
                 invert: bool = False) -> None:
        self.name = name.encode()
        self.value = value
        self.invert = invert

    def matches(self, head: RequestHead, query: bytes) -> bool:
        found = first_query_value(query, self.name)
        if found is None:
            return self.invert
        value = self.value
        return (value is None or value.matches(found)) is not self.invert

    @classmethod
    def of(cls, m: QueryParamMatch) -> QueryMatcher:
        return cls(m.name, string_matcher(m.type, m.value))


class MethodMatcher(Condition):
    __slots__ = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method.encode("ascii")

    def matches(self, head: RequestHead, query: bytes) -> bool:
        return head.method == self.method


class PathMatcher:
    """A Gateway API path condition on the path without its query.

    `PathPrefix` matches whole segments (`/api` matches `/api`, `/api/` and `/api/x`, not
    `/apix`); `Exact` the whole path; `RegularExpression` the whole path, fully."""

    __slots__ = ("exact", "prefix", "regex", "type", "value")

    def __init__(self, m: PathMatch) -> None:
        self.type = m.type
        self.value = m.value
        self.exact: bytes | None = m.value.encode() if m.type == "Exact" else None
        self.regex: Regex | None = Regex(m.value) if m.type == "RegularExpression" else None
        # Normalise "/api/" to "/api" so segment matching is one comparison.
        self.prefix: bytes | None = ((m.value.rstrip("/") or "/").encode()
                                     if m.type == "PathPrefix" else None)

    def matches(self, path: bytes) -> bool:
        if self.exact is not None:
            return path == self.exact
        p = self.prefix
        if p is None:
            assert self.regex is not None
            return self.regex.matches(path)
        if p == b"/":
            return True
        return path.startswith(p) and (len(path) == len(p) or path[len(p)] == 47)  # "/"


def conditions_of(m: RouteMatch) -> tuple[Condition, ...]:
    """A route match's conditions besides the path, cheapest first (method, query, headers):
    the first that fails ends the test."""
    out: list[Condition] = []
    if m.method is not None:
        out.append(MethodMatcher(m.method))
    out += [QueryMatcher.of(q) for q in m.query_params]
    out += [HeaderMatcher.of(h) for h in m.headers]
    return tuple(out)
