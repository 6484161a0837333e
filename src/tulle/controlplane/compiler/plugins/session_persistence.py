"""A route rule's Gateway API `sessionPersistence` (GEP-1619) -> the rule's `SessionPersistence`
filter (`proxyconfig/filters/session.py`; ADR 0058).  HTTPRoute and GRPCRoute rules alike.

* `sessionName`, else `tulle-session` for a Cookie session and `x-tulle-session` for a Header
  one (the spec leaves the default to the implementation);
* the cookie's `Path` is the rule's path match, as the GEP asks: the path of an `Exact` or
  `PathPrefix` match, the literal start of a regular expression up to its last `/`, and for
  several matches the longest common start of those, cut after its last `/` (a gRPC rule's
  matches are `/<service>/<method>` paths, so a method's session is scoped to it);
* `absoluteTimeout` / `idleTimeout` in milliseconds (`0s`: none); `Permanent` gives the cookie
  `Max-Age` = `absoluteTimeout` (the API refuses a Permanent cookie without one).

A value the proxy cannot take is not guessed at: the route's status says it was left out and
the rule runs without session persistence (its traffic still flows, balanced as usual).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from msgspec.structs import replace

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import Dropped, MeshModel, Route, Rule
from tulle.controlplane.compiler.plugins.base import Plugin, map_routes
from tulle.proxyconfig.filters.session import SessionPersistence, errors
from tulle.proxyconfig.model import RouteMatch

NAME = "session_persistence"
DEFAULT_COOKIE = "tulle-session"
DEFAULT_HEADER = "x-tulle-session"
_REGEX_META = frozenset("\\^$.|?*+()[]{}")
_COOKIE_PATH_OK = frozenset(chr(c) for c in range(0x21, 0x7F)) - {";", ","}


def _literal(m: RouteMatch) -> str:
    """The literal start of a match's path (a regular expression's up to its first
    metacharacter), keeping only what a cookie `Path` may hold."""
    value = m.path.value
    out = []
    for ch in value:
        if (m.path.type == "RegularExpression" and ch in _REGEX_META) or ch not in _COOKIE_PATH_OK:
            break
        out.append(ch)
    text = "".join(out)
    if m.path.type == "RegularExpression" or len(text) < len(value):
        text = text[: text.rfind("/") + 1]
    return text


def cookie_path(matches: Sequence[RouteMatch]) -> str:
    """The cookie `Path` for a rule with `matches` (see the module docstring)."""
    paths = [_literal(m) for m in matches]
    if not paths:
        return "/"
    if len(set(paths)) == 1:
        path = paths[0]
    else:
        path = paths[0]
        for p in paths[1:]:
            n = 0
            while n < min(len(path), len(p)) and path[n] == p[n]:
                n += 1
            path = path[:n]
        path = path[: path.rfind("/") + 1]
    if len(path) > 1 and path.endswith("/") and all(
            m.path.type == "PathPrefix" and m.path.value.rstrip("/") == path.rstrip("/")
            for m in matches):
        path = path.rstrip("/")  # `/cart/` as a prefix is `/cart`: Path=/cart covers it
    return path if path.startswith("/") else "/"


def _session(r: Rule, sp: Mapping[str, object], where: str,
             dropped: list[Dropped]) -> SessionPersistence | None:
    kind = str(sp.get("type") or "Cookie")
    name = str(sp.get("sessionName") or (DEFAULT_COOKIE if kind == "Cookie" else DEFAULT_HEADER))
    cookie = sp.get("cookieConfig")
    permanent = isinstance(cookie, Mapping) and cookie.get("lifetimeType") == "Permanent"
    entry: dict[str, object] = {"type": "SessionPersistence", "name": name, "kind": kind}
    if kind == "Cookie":
        entry["path"] = cookie_path(r.matches)
    if permanent:
        entry["permanent"] = True
    try:
        for field, key in (("absoluteTimeout", "absolute_timeout_ms"),
                           ("idleTimeout", "idle_timeout_ms")):
            value = sp.get(field)
            if value:
                ms = to_ms(str(value))
                if ms:
                    entry[key] = ms
        cfg = msgspec.convert(entry, SessionPersistence)
    except (ValueError, msgspec.ValidationError) as exc:
        dropped.append(Dropped(f"{where}: {exc}", "invalid"))
        return None
    problems = errors(cfg, where)
    if problems:
        dropped.append(Dropped(str(problems[0]), "invalid"))
        return None
    return cfg


def _route(route: Route) -> Route:
    if not any(isinstance(r.spec.get("sessionPersistence"), Mapping) for r in route.rules):
        return route
    dropped: list[Dropped] = []
    rules = []
    for r in route.rules:
        sp = r.spec.get("sessionPersistence")
        if not isinstance(sp, Mapping) or r.left_out:
            rules.append(r)
            continue
        where = f"rules[{r.index}].sessionPersistence"
        refs = r.spec.get("backendRefs") or []
        if len(refs) > 1 and any(isinstance(b, Mapping) and b.get("filters") for b in refs):
            # A token may move a request to another backend than the one whose filters the
            # chain was built for: refused rather than run with the wrong backend's filters.
            dropped.append(Dropped(f"{where}: not applied on a rule whose backendRefs carry "
                                   "filters of their own (a session may move a request to "
                                   "another backend than the one its filters were chosen "
                                   "for); the rule is balanced as usual", "unsupported"))
            rules.append(r)
            continue
        cfg = _session(r, sp, where, dropped)
        rules.append(replace(r, session=cfg) if cfg is not None else r)
    return replace(route, rules=tuple(rules), dropped=route.dropped + tuple(dropped))


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
