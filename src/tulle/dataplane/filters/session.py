"""Session persistence: a token on the response pins the client's later requests to the
endpoint that answered (Gateway API `sessionPersistence`, GEP-1619; ADR 0058).

Why a filter: it reads the request's cookie or header and writes the response's, which is
what filters do, and a rule without it pays nothing.  Choosing the endpoint stays the
router's: the filter only tells the request stream which endpoint it would like
(`FilterStream.prefer_endpoint`), and the attempt layer sends the first try there while the
endpoint is healthy (`ClusterRuntime.open_stream`); retries leave it like any other failed try.

Per request:

* request head: the token (the cookie `name` of the `Cookie` fields, or the request header
  `name`) is decoded (`session_token.decode`: wrong size or alphabet, another version, expired
  -> ignored).  Its endpoint id is looked up among the *current* endpoints of the rule's
  backend clusters (a map per cluster, rebuilt when the cluster's endpoint list changes); a
  healthy one is preferred.  Anything else is balanced as usual.
* response head (from an upstream; local replies get no token): the endpoint that answered is
  `record.upstream_host`.  A token naming it is issued when the request had none for it (a new
  session, or its endpoint went away and the request went elsewhere), and on every response
  when an idle timeout is set (the refresh; the absolute expiry is carried over, never moved).
  `Set-Cookie: name=token; Path=path; HttpOnly` (`; Max-Age=s` when permanent), or the
  response header `name: token` (replacing one the upstream set).

Expiries are wall-clock seconds since the epoch: the token goes through the client and may
come back to another replica or after a restart (`clock` is injected for tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tulle.dataplane.exchange import ResponseHead
from tulle.dataplane.filters.session_token import Token, cookie_value, encode, endpoint_id, parse
from tulle.dataplane.http.filter import CONTINUE, FilterStream, HttpFilter
from tulle.dataplane.upstream.lb import EndpointState
from tulle.proxyconfig.filters.session import SessionPersistence

CACHE = 4096
"""Entries each of a factory's caches holds before it starts over."""
MAX_CACHED = 64
"""Longer values are not tokens (23 characters, some whitespace) and are not remembered: the
token cache holds at most `CACHE` x this many bytes of keys."""

Clock = Callable[[], float]
"""Seconds since the epoch (wall clock: tokens outlive processes)."""


def wall_clock() -> float:
    return time.time()  # noqa: TID251 - an expiry carried by the client, not a duration


class _Ids:
    """A cluster's current endpoints by token id, for one endpoint list object."""

    __slots__ = ("by_id", "endpoints")

    def __init__(self, cluster: str, endpoints: list[EndpointState]) -> None:
        self.endpoints = endpoints
        self.by_id = {endpoint_id(cluster, e.key): e for e in endpoints}


class SessionFactory:
    """Built once per route per snapshot: the compiled names and the rule's backends."""

    __slots__ = ("_ids", "_issued", "_names", "_tokens", "absolute", "cfg", "clock", "clusters",
                 "cookie", "filter_type", "header", "idle", "set_cookie_suffix")

    name = "session"
    stateless = False

    def __init__(self, cfg: SessionPersistence, clusters: Sequence[str] = (),
                 clock: Clock = wall_clock) -> None:
        self.cfg = cfg
        self.clusters = tuple(dict.fromkeys(clusters))
        """The rule's backend clusters: a token may name an endpoint of any of them."""
        self.clock = clock
        name = cfg.name.encode()
        self.cookie = name if cfg.kind == "Cookie" else None
        """The cookie's name (exact case); None for a Header session."""
        self.header = cfg.name.lower().encode() if cfg.kind == "Header" else None
        """The request and response header's name (lower case); None for a Cookie session."""
        self.idle = cfg.idle_timeout_ms // 1000 if cfg.idle_timeout_ms else 0
        self.absolute = cfg.absolute_timeout_ms // 1000 if cfg.absolute_timeout_ms else 0
        if cfg.idle_timeout_ms:
            self.idle = max(1, self.idle)
        if cfg.absolute_timeout_ms:
            self.absolute = max(1, self.absolute)
        suffix = b"; Path=" + cfg.path.encode() + b"; HttpOnly"
        if cfg.permanent:
            suffix += b"; Max-Age=%d" % self.absolute
        self.set_cookie_suffix = suffix
        self._ids: dict[str, _Ids] = {}
        self._names: dict[tuple[str, str], bytes] = {}
        """(cluster, `address:port`) -> endpoint id, for the responses (bounded: `CACHE`)."""
        self._tokens: dict[bytes, Token | None] = {}
        """Token field values seen -> what they parse to (expiry checked per request):
        a returning client costs one lookup (bounded: `CACHE`)."""
        self._issued: dict[tuple[bytes, int, int], bytes] = {}
        """(endpoint id, idle expiry, absolute expiry) -> the field value to send: without
        timeouts one per endpoint, with them one per endpoint and second (bounded: `CACHE`)."""
        self.filter_type: type[HttpFilter] = SessionFilter

    def create(self) -> HttpFilter:
        return SessionFilter(self)

    def lookup(self, stream: FilterStream, ep_id: bytes) -> tuple[str, EndpointState] | None:
        """The current endpoint `ep_id` names among the rule's backend clusters."""
        for name in self.clusters:
            rt = stream.cluster(name)
            if rt is None:
                continue
            ids = self._ids.get(name)
            if ids is None or ids.endpoints is not rt.endpoints:
                ids = self._ids[name] = _Ids(name, rt.endpoints)
            ep = ids.by_id.get(ep_id)
            if ep is not None:
                return name, ep
        return None

    def token(self, raw: bytes) -> Token | None:
        """The unexpired token in `raw` (`session_token.decode`, memoised)."""
        if len(raw) > MAX_CACHED:
            return None  # never a token (nor kept: the cache's keys stay small)
        tokens = self._tokens
        if raw in tokens:
            token = tokens[raw]
        else:
            if len(tokens) >= CACHE:
                tokens.clear()
            token = tokens[raw] = parse(raw)
        if token is None or (
                (token.idle_expiry or token.absolute_expiry) and token.expired(self.clock())):
            return None
        return token

    def endpoint_id(self, cluster: str, host: str) -> bytes:
        names = self._names
        key = (cluster, host)
        ep_id = names.get(key)
        if ep_id is None:
            if len(names) >= CACHE:
                names.clear()
            ep_id = names[key] = endpoint_id(cluster, host)
        return ep_id

    def issue(self, ep_id: bytes, idle_expiry: int, absolute_expiry: int) -> bytes:
        """The response field's value for a token naming `ep_id`."""
        issued = self._issued
        key = (ep_id, idle_expiry, absolute_expiry)
        value = issued.get(key)
        if value is None:
            if len(issued) >= CACHE:
                issued.clear()
            token = encode(ep_id, idle_expiry, absolute_expiry)
            value = issued[key] = (token if self.cookie is None
                                   else self.cookie + b"=" + token + self.set_cookie_suffix)
        return value

    def token_value(self, stream: FilterStream) -> bytes | None:
        """The token the request carries (the first cookie or header of the name)."""
        headers = stream.head.headers
        cookie = self.cookie
        if cookie is not None:
            for n, v in headers:
                if n == b"cookie":
                    value = cookie_value(v, cookie)
                    if value is not None:
                        return value
            return None
        want = self.header
        for n, v in headers:
            if n == want:
                return v
        return None


class SessionFilter(HttpFilter):
    """One request's session: the token it brought, the endpoint it named."""

    __slots__ = ("absolute", "factory", "pinned")

    def __init__(self, factory: SessionFactory) -> None:
        self.factory = factory
        self.pinned = b""
        """The endpoint id of the valid token the request brought ("": none)."""
        self.absolute = 0
        """That token's absolute expiry (carried into the next token)."""

    def on_request_head(self, stream: FilterStream) -> int:
        f = self.factory
        raw = f.token_value(stream)
        if raw is None:
            return CONTINUE
        token = f.token(raw)
        if token is None:
            return CONTINUE
        found = f.lookup(stream, token.endpoint)
        if found is None:
            return CONTINUE
        self.pinned = token.endpoint
        self.absolute = token.absolute_expiry
        cluster, ep = found
        if ep._healthy:
            stream.prefer_endpoint(cluster, ep)
        return CONTINUE

    def on_response_head(self, stream: FilterStream, head: ResponseHead) -> int:
        record = stream.record
        host = record.upstream_host
        if not host:
            return CONTINUE
        f = self.factory
        ep_id = f.endpoint_id(record.cluster, host)
        same = ep_id == self.pinned
        if same and not f.idle:
            return CONTINUE  # the client's token still names this endpoint: nothing to say
        if f.idle or f.absolute:
            now = int(f.clock())
            absolute = self.absolute if same else (now + f.absolute if f.absolute else 0)
            value = f.issue(ep_id, now + f.idle if f.idle else 0, absolute)
        else:
            value = f.issue(ep_id, 0, 0)
        headers = head.headers
        name = f.header
        if name is None:
            headers.append((b"set-cookie", value))
        else:
            headers[:] = [h for h in headers if h[0] != name]
            headers.append((name, value))
        return CONTINUE


__all__ = ["SessionFactory", "SessionFilter", "wall_clock"]
