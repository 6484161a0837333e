"""Gateway API route matches -> the contract's `RouteMatch`es, exactly or not at all.

HTTPRoute: path Exact / PathPrefix / RegularExpression, header and query-parameter Exact /
RegularExpression, method.  The conditions of one match all hold (AND); a rule is selected by any
of its matches (OR), which is what the proxy's `RouteRule.matches` means too.  GRPCRoute: a
method match becomes a path match on `/<service>/<method>` (Exact, or a regular expression where
one side is a pattern or absent; each side keeps its own meaning there, `_side`), its header
matches header matches.

Never approximated: a match the proxy cannot run as written (a regular expression outside what
`proxyconfig/regex.py` admits) makes the whole rule's matches unusable — dropping one match of an
OR would quietly send its traffic to another rule — and the reason is returned with the field's
path.  Where Gateway API says only the first of several entries for one header (case-insensitive)
or query parameter (case-sensitive) counts, the later ones are skipped, as the spec says, since
the proxy takes each name once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from tulle.proxyconfig import regex
from tulle.proxyconfig.model import HeaderMatch, PathMatch, QueryParamMatch, RouteMatch

MatchCompiler = Callable[[list[dict[str, Any]], str, list[str]], tuple[RouteMatch, ...]]
"""(the rule's `matches`, its path for messages, problems to append to) -> the matches, or ()
when any one cannot be compiled (its problem appended)."""

_CATCH_ALL = RouteMatch()
_PATH_TYPES: dict[str, Literal["PathPrefix", "Exact", "RegularExpression"]] = {
    "PathPrefix": "PathPrefix", "Exact": "Exact", "RegularExpression": "RegularExpression"}


def _pattern(value: str, path: str, problems: list[str]) -> bool:
    why = regex.problem(value)
    if why is not None:
        problems.append(f"{path}: regular expression refused: {why}")
        return False
    return True


_Named = TypeVar("_Named", HeaderMatch, QueryParamMatch)


def _named(kind: type[_Named], items: list[dict[str, Any]], path: str, problems: list[str],
           fold: Callable[[str], str]) -> list[_Named] | None:
    """Header or query-parameter matches: the first entry per `fold`ed name counts (Gateway
    API), a regular expression only if the proxy runs it as written."""
    out: list[_Named] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = str(item["name"])
        if fold(name) in seen:
            continue  # Gateway API: only the first entry for a name counts
        seen.add(fold(name))
        value = str(item.get("value", ""))
        if item.get("type") == "RegularExpression":
            if not _pattern(value, f"{path}[{i}].value", problems):
                return None
            out.append(kind(type="RegularExpression", name=name, value=value))
        else:
            out.append(kind(type="Exact", name=name, value=value))
    return out


def _headers(items: list[dict[str, Any]], path: str,
             problems: list[str]) -> list[HeaderMatch] | None:
    return _named(HeaderMatch, items, path, problems, str.lower)  # names case-insensitive


def _query(items: list[dict[str, Any]], path: str,
           problems: list[str]) -> list[QueryParamMatch] | None:
    return _named(QueryParamMatch, items, path, problems, str)  # names case-sensitive


def http_matches(matches: list[dict[str, Any]], path: str,
                 problems: list[str]) -> tuple[RouteMatch, ...]:
    """An HTTPRoute rule's matches (none written: every request)."""
    if not matches:
        return (_CATCH_ALL,)
    out: list[RouteMatch] = []
    for i, m in enumerate(matches):
        at = f"{path}.matches[{i}]"
        p = m.get("path") or {}
        pvalue = str(p.get("value") or "/")
        ptype = _PATH_TYPES.get(p.get("type") or "PathPrefix", "PathPrefix")
        if ptype == "RegularExpression" and not _pattern(pvalue, f"{at}.path.value", problems):
            return ()
        headers = _headers(m.get("headers") or [], f"{at}.headers", problems)
        query = _query(m.get("queryParams") or [], f"{at}.queryParams", problems)
        if headers is None or query is None:
            return ()
        out.append(RouteMatch(path=PathMatch(type=ptype, value=pvalue), headers=headers,
                              query_params=query, method=m.get("method") or None))
    return tuple(out)


_NAME = "[^/]+"
"""Any one path segment: a gRPC service or method the match leaves open."""


def _side(pattern: str | None) -> str:
    """One side (service or method) of a GRPCRoute regex match, as part of the path regex.

    Each side is matched whole, so a leading `^` and a trailing (unescaped) `$` say nothing;
    pasted into the middle of `/<service>/<method>` they made the path regex match nothing, an
    accepted rule never routed: they are left out.  A pattern with an alternation is grouped:
    `Get|List` made `/svc/Get|List`, which never matched `/svc/List` and did match `List`
    (ADR 0101).  Grouped only then, so every other pattern compiles to what it did (and ranks
    the same: the proxy puts longer regexes first).  Each side is a valid pattern on its own
    (the API compiles it), so `(?:...)` cannot be unbalanced by it."""
    if not pattern:
        return _NAME
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and (len(pattern) - len(pattern[:-1].rstrip("\\"))) % 2 == 1:
        pattern = pattern[:-1]  # (an odd count of `\` and `$` in all: `\$` is a dollar sign)
    return f"(?:{pattern})" if "|" in pattern else pattern


def _grpc_path(method: dict[str, Any], at: str, problems: list[str]) -> PathMatch | None:
    svc, meth = method.get("service"), method.get("method")
    if (method.get("type") or "Exact") == "Exact":
        if svc and meth:
            return PathMatch(type="Exact", value=f"/{svc}/{meth}")
        if svc:
            return PathMatch(type="PathPrefix", value=f"/{svc}")  # per segment: /svc/...
        if not meth:
            return PathMatch()
        value = f"/{_NAME}/{re.escape(str(meth))}"
    else:
        value = f"/{_side(svc)}/{_side(meth)}"
    if not _pattern(value, f"{at}.method", problems):
        return None
    return PathMatch(type="RegularExpression", value=value)


def grpc_matches(matches: list[dict[str, Any]], path: str,
                 problems: list[str]) -> tuple[RouteMatch, ...]:
    """A GRPCRoute rule's matches (none written: every call)."""
    if not matches:
        return (_CATCH_ALL,)
    out: list[RouteMatch] = []
    for i, m in enumerate(matches):
        at = f"{path}.matches[{i}]"
        pm = _grpc_path(m.get("method") or {}, at, problems)
        headers = _headers(m.get("headers") or [], f"{at}.headers", problems)
        if pm is None or headers is None:
            return ()
        out.append(RouteMatch(path=pm, headers=headers))
    return tuple(out)


__all__ = ["MatchCompiler", "grpc_matches", "http_matches"]
