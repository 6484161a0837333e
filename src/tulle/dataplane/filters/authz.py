"""Authorization at run time: compiled policies, the decision, and the `Authorization` filter.

Why here, one module for both layers: the HTTP filter below and the L4 network filter
(`dataplane/network/authz.py`) must decide alike, so both run the one `Engine` compiled from
the contract's policies (`proxyconfig/filters/authz.py`) once per snapshot.  Matching reuses the
request matcher vocabulary (`routing/match.py`: string and header matchers on the head).

Decision (Istio's, ADR 0031): a matching enforced DENY policy refuses; else, when there are
enforced ALLOW policies, only a request one of them matches passes; else it passes.  AUDIT
policies that match are counted (`result="audit"`).  Dry-run policies are evaluated in a shadow
decision with every policy enforced: a request the real decision admits and the shadow refuses
is counted and recorded as `dry_run_deny` by the shadow's policy, and logged (logger
`tulle.authz`, path without its query).  Every decision is counted in
`tulle_proxy_authz_decisions_total{listener,policy,action,result}` and written to the request
record (`record.authz`, `<result>:<policy>`) that access logs read.

Identity fields read `facts.peer_identity` (a SPIFFE ID, `spiffe://<td>/ns/<ns>/sa/<sa>`), set
by the accept side once it verifies a client certificate (mTLS); empty, they never match.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tulle.dataplane.http.filter import CONTINUE, STOP, FilterStream, HttpFilter
from tulle.dataplane.routing.match import (
    Exact,
    HeaderMatcher,
    Prefix,
    StringMatcher,
    Suffix,
)
from tulle.dataplane.routing.paths import remove_dot_segments
from tulle.proxyconfig.address import matched_network, peer_ip

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead
    from tulle.proxyconfig.filters.authz import (
        Authorization,
        AuthzOperation,
        AuthzPolicy,
        AuthzSource,
    )

log = logging.getLogger("tulle.authz")


class _Any(StringMatcher):
    __slots__ = ()

    def matches(self, subject: bytes) -> bool:
        return True


def pattern(value: str) -> StringMatcher:
    """`*` any, `x*` prefix, `*x` suffix, else exact (the contract's pattern grammar)."""
    if value == "*":
        return _Any(b"")
    if value.endswith("*"):
        return Prefix(value[:-1].encode())
    if value.startswith("*"):
        return Suffix(value[1:].encode())
    return Exact(value.encode())


_IPS: dict[str, tuple[int, int] | None] = {}
"""Parsed peer addresses, (version, integer): a memo of a pure function, bounded (cleared when
full), so a busy listener parses each client address once, not per request."""


def _ip_key(text: str) -> tuple[int, int] | None:
    got = _IPS.get(text, False)
    if got is False:
        ip = peer_ip(text)
        got = (ip.version, int(ip)) if ip is not None else None
        if len(_IPS) >= 4096:
            _IPS.clear()
        _IPS[text] = got
    return got  # type: ignore[return-value]


class Peer:
    """Who is calling, per decision: identity (its namespace/account parsed on first use)
    and address (parsed once per distinct address)."""

    __slots__ = ("_parsed", "_text", "account", "address", "domain", "identity", "ip",
                 "namespace")

    def __init__(self, identity: str, ip: str) -> None:
        self._text = identity
        self.identity = identity.encode() if identity else b""
        self._parsed = False
        self.namespace = ""
        self.account = ""
        self.domain = ""
        """The trust domain of `identity` (parsed with namespace and account)."""
        self.address = ip
        """The peer's IP as text (what a log line shows)."""
        self.ip = _ip_key(ip) if ip else None
        """(IP version, address as an integer); None when there is no IP peer."""

    def parse(self) -> None:
        self._parsed = True
        identity = self._text
        if identity.startswith("spiffe://"):
            parts = identity[9:].split("/")
            if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
                self.domain, self.namespace, self.account = parts[0], parts[2], parts[4]


class _Source:
    __slots__ = ("accounts", "domains", "namespaces", "nets", "principals")

    def __init__(self, s: AuthzSource) -> None:
        self.principals = tuple(pattern(p) for p in s.principals)
        self.namespaces = frozenset(s.namespaces)
        self.accounts = frozenset(s.service_accounts)
        self.domains = frozenset(s.trust_domains)
        """Where `namespaces` and `accounts` are read (empty: any trust domain)."""
        nets = [matched_network(n) for n in s.ip_blocks]
        self.nets: tuple[tuple[int, int, int], ...] = tuple(
            (n.version, int(n.netmask), int(n.network_address)) for n in nets)
        """(version, mask, network) as integers: a test is an AND and a compare."""

    def matches(self, peer: Peer) -> bool:
        if self.principals:
            ident = peer.identity
            if not ident:
                return False
            for m in self.principals:
                if m.matches(ident):
                    break
            else:
                return False
        if self.namespaces or self.accounts:
            if not peer._parsed:
                peer.parse()
            # An ID in another trust domain is no namespace or account of this mesh, even
            # when its CA chains to the same root (zero-trust audit, ADR 0096).
            if self.domains and peer.domain not in self.domains:
                return False
            ns = peer.namespace
            if self.namespaces and not (ns and ("*" in self.namespaces or ns in self.namespaces)):
                return False
            if self.accounts and f"{ns}/{peer.account}" not in self.accounts:
                return False
        if self.nets:
            ip = peer.ip
            if ip is None:
                return False
            version, value = ip
            for v, mask, net in self.nets:
                if v == version and value & mask == net:
                    break
            else:
                return False
        return True


class _Operation:
    __slots__ = ("headers", "http", "methods", "paths")

    def __init__(self, o: AuthzOperation) -> None:
        self.paths = tuple(pattern(p) for p in o.paths)
        self.methods = frozenset(m.encode() for m in o.methods)
        self.headers = tuple(
            _AnyHeader(h.name, tuple(pattern(v) for v in h.values)) for h in o.headers)
        self.http = bool(self.paths or self.methods or self.headers)

    def matches(self, head: RequestHead | None, path: bytes, l4_deny: bool) -> bool:
        if head is None:  # L4: HTTP fields never match, but a DENY rule ignores them
            return l4_deny or not self.http
        if self.methods and head.method not in self.methods:
            return False
        if self.paths:
            for m in self.paths:
                if m.matches(path):
                    break
            else:
                return False
        if l4_deny:  # a DENY holds when any value the request carries matches
            for h in self.headers:  # noqa: SIM110 (a loop allocates nothing)
                if not h.matches_any(head):
                    return False
            return True
        for h in self.headers:  # noqa: SIM110 (a loop allocates nothing)
            if not h.matches(head, b""):
                return False
        return True


class _AnyHeader(HeaderMatcher):
    """A header condition with several accepted patterns (any one)."""

    __slots__ = ("options",)

    def __init__(self, name: str, options: tuple[StringMatcher, ...]) -> None:
        super().__init__(name, None)
        self.options = options

    def matches(self, head: RequestHead, query: bytes) -> bool:
        values = [v for n, v in head.headers if n == self.name]
        if not values:
            return False
        joined = values[0] if len(values) == 1 else b",".join(values)
        return any(m.matches(joined) for m in self.options)

    def matches_any(self, head: RequestHead) -> bool:
        """For a DENY rule: the joined value, any one field line, or any element of the
        comma-separated list they make (RFC 9110 section 5.3: `x: a` twice means `x: a, a`).
        Matched only as a whole, `x-debug: true` sent twice ("true,true") or as
        `true, true` dodged a DENY on "true" that the application, reading the first value
        or the list, still saw (attack review A1, ADR 0045)."""
        values = [v for n, v in head.headers if n == self.name]
        if not values:
            return False
        options = self.options
        joined = values[0] if len(values) == 1 else b",".join(values)
        if any(m.matches(joined) for m in options):
            return True
        for v in values:
            if len(values) > 1 and any(m.matches(v) for m in options):
                return True
            if b"," in v:
                for raw in v.split(b","):
                    item = raw.strip(b" \t")
                    if any(m.matches(item) for m in options):
                        return True
        return False


class CompiledPolicy:
    __slots__ = ("action", "dry_run", "l4_deny", "name", "rules")

    def __init__(self, p: AuthzPolicy) -> None:
        self.name = p.name
        self.action = p.action
        self.l4_deny = p.action == "DENY"
        self.dry_run = p.dry_run
        self.rules = tuple((tuple(_Source(s) for s in r.sources),
                            tuple(_Operation(o) for o in r.operations)) for r in p.rules)

    def matches(self, peer: Peer, head: RequestHead | None, path: bytes) -> int:
        """1 + the index of the first rule that matches, 0 when none (truthy: it matches;
        `tulle explain` names the rule from it)."""
        l4_deny = self.l4_deny
        n = 0
        for sources, operations in self.rules:
            n += 1
            if sources:
                for s in sources:
                    if s.matches(peer):
                        break
                else:
                    continue
            if operations:
                for o in operations:
                    if o.matches(head, path, l4_deny):
                        break
                else:
                    continue
            return n
        return 0


class Verdict:
    """The outcome of one decision: admitted or not, by which policy, and what to count."""

    __slots__ = ("action", "allowed", "events", "policy", "result", "rule")

    def __init__(self, allowed: bool, policy: str, action: str, rule: int = -1) -> None:
        self.allowed = allowed
        self.policy = policy
        self.action = action
        self.rule = rule
        """Index of the deciding policy's rule that matched; -1: none did (no policy applies,
        or no ALLOW policy matched)."""
        self.result = "allow" if allowed else "deny"
        self.events: list[tuple[str, str, str]] = [(policy, action, self.result)]
        """(policy, action, result) to count: the decision, then audits and dry-run denials."""

    @property
    def record(self) -> str:
        """What the request record carries: `<result>:<policy>`, dry-run denials appended."""
        extra = [f"{r}:{p}" for p, _, r in self.events[1:] if r == "dry_run_deny"]
        return " ".join([f"{self.result}:{self.policy}", *extra])


def _decide(deny: Sequence[CompiledPolicy], allow: Sequence[CompiledPolicy], peer: Peer,
            head: RequestHead | None, path: bytes) -> Verdict:
    if deny:
        paths = deny_paths(path) if head is not None else (path,)
        for p in deny:
            for one in paths:
                hit = p.matches(peer, head, one)
                if hit:
                    return Verdict(False, p.name, "DENY", hit - 1)
    if not allow:
        return Verdict(True, "-", "-")
    for p in allow:
        hit = p.matches(peer, head, path)
        if hit:
            return Verdict(True, p.name, "ALLOW", hit - 1)
    return Verdict(False, ",".join(p.name for p in allow), "ALLOW")


class Engine:
    """A list of policies compiled once per snapshot; `decide` runs per request/connection."""

    __slots__ = ("allow", "audit", "deny", "shadow_allow", "shadow_deny")

    def __init__(self, policies: Sequence[AuthzPolicy]) -> None:
        compiled = [CompiledPolicy(p) for p in policies]
        live = [p for p in compiled if not p.dry_run]
        self.deny = tuple(p for p in live if p.action == "DENY")
        self.allow = tuple(p for p in live if p.action == "ALLOW")
        self.audit = tuple(p for p in compiled if p.action == "AUDIT")
        has_dry = any(p.dry_run and p.action != "AUDIT" for p in compiled)
        self.shadow_deny = tuple(p for p in compiled if p.action == "DENY") if has_dry else None
        self.shadow_allow = tuple(p for p in compiled if p.action == "ALLOW") if has_dry else ()

    def decide(self, peer: Peer, head: RequestHead | None, path: bytes = b"") -> Verdict:
        v = _decide(self.deny, self.allow, peer, head, path)
        for p in self.audit:
            if p.matches(peer, head, path):
                v.events.append((p.name, "AUDIT", "dry_run_audit" if p.dry_run else "audit"))
        if v.allowed and self.shadow_deny is not None:
            shadow = _decide(self.shadow_deny, self.shadow_allow, peer, head, path)
            if not shadow.allowed:
                v.events.append((shadow.policy, shadow.action, "dry_run_deny"))
                log.info("authorization dry run: policy %s would deny %s %s from %s %s",
                         shadow.policy, head.method.decode("latin-1") if head else "TCP",
                         path.decode("latin-1"), peer.address or "-",
                         peer.identity.decode() or "-")
        return v


_SLASHES = re.compile(rb"/{2,}")
_DENY_SUSPECT = re.compile(rb";|%(?:2[fF]|5[cC])").search
_PARAMS = re.compile(rb";[^/]*")
_ESCAPED_SLASH = re.compile(rb"%(?:2[fF]|5[cC])")


def authz_path(target: bytes) -> bytes:
    """The path policies see: without the query, repeated slashes merged.  The proxy has
    already normalised dot segments and percent-escapes (`routing/paths.py`); `//admin` is kept
    for the upstream unless `merge_slashes` is set, but many applications serve it as `/admin`,
    so a DENY on `/admin*` must see it as that (attack finding, ADR 0031)."""
    path = target.split(b"?", 1)[0]
    return _SLASHES.sub(b"/", path) if b"//" in path else path


def deny_paths(path: bytes) -> tuple[bytes, ...]:
    """The paths a DENY rule is tried on: the path policies see, and what an application
    may read it as.  Path parameters (`/admin;x`: Tomcat and Spring serve `/admin`) and
    escaped slashes (`/admin%2Fx`: kept opaque by the proxy, decoded to `/admin/x` by WSGI
    servers and others) dodged a DENY on `/admin` or `/admin/*` (attack review A1, ADR 0045).
    An ALLOW rule sees only the path itself: a variant never widens what is allowed."""
    if _DENY_SUSPECT(path) is None:
        return (path,)
    out = [path]
    bare = _PARAMS.sub(b"", path) if b";" in path else path
    for raw in (bare, _ESCAPED_SLASH.sub(b"/", bare), _ESCAPED_SLASH.sub(b"/", path)):
        v = _SLASHES.sub(b"/", raw)
        if v.startswith(b"/"):
            v = remove_dot_segments(v)
        if v not in out:
            out.append(v)
    return tuple(out)


def denied_body(v: Verdict) -> bytes:
    """The 403 body: which policy refused (names only: nothing of the request is echoed)."""
    if v.action == "DENY":
        return f"RBAC: access denied by DENY policy {v.policy}\n".encode()
    return f"RBAC: access denied: no ALLOW policy matched ({v.policy})\n".encode()


class _AuthzFilter(HttpFilter):
    __slots__ = ("engine",)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on_request_head(self, stream: FilterStream) -> int:
        facts = stream.facts
        peer = facts.peer
        head = stream.head
        v = self.engine.decide(Peer(facts.peer_identity, peer[0] if peer else ""), head,
                               authz_path(head.path))
        counters = stream.counters
        for policy, action, result in v.events:
            counters.authz_decision(policy, action, result)
        record = stream.record
        record.authz = v.record
        if v.allowed:
            return CONTINUE
        record.flags = "RBAC"
        stream.reply(403, denied_body(v))
        return STOP


class AuthzFactory:
    """Built once per route per snapshot; stateless (one filter serves every request)."""

    __slots__ = ("_filter", "engine")

    name = "authz"
    stateless = True
    filter_type: type[HttpFilter] = _AuthzFilter

    def __init__(self, cfg: Authorization) -> None:
        self.engine = Engine(cfg.policies)
        self._filter = _AuthzFilter(self.engine)

    def create(self) -> HttpFilter:
        return self._filter
