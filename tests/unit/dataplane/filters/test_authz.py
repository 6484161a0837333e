"""Authorization decisions: matching, precedence (DENY > ALLOW > default), AUDIT, dry run, L4,
identities, and the filter's 403 on a scripted request stream."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.filters.authz import Engine, Peer
from tulle.dataplane.http.chain import ChainRun, build_chain
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.proxyconfig.filters.authz import Authorization, AuthzPolicy

ALICE = "spiffe://mesh.local/ns/shop/sa/alice"
EVE = "spiffe://mesh.local/ns/other/sa/eve"


def policies(*raw: dict[str, Any]) -> list[AuthzPolicy]:
    return msgspec.convert(list(raw), list[AuthzPolicy])


def head(method: bytes = b"GET", path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None
         = None) -> RequestHead:
    return RequestHead(method, path, b"svc", b"http", headers or [])


def decide(engine: Engine, *, ip: str = "10.0.0.1", identity: str = "",
           h: RequestHead | None = None, l4: bool = False) -> tuple[bool, str, list[Any]]:
    h = None if l4 else (h or head())
    v = engine.decide(Peer(identity, ip), h, h.path.split(b"?")[0] if h else b"")
    return v.allowed, v.policy, v.events


def test_no_allow_policy_means_allow_and_a_matching_deny_refuses() -> None:
    e = Engine(policies({"name": "ns/no-admin", "action": "DENY",
                         "rules": [{"operations": [{"paths": ["/admin*"]}]}]}))
    assert decide(e)[:2] == (True, "-")
    assert decide(e, h=head(path=b"/admin/users"))[:2] == (False, "ns/no-admin")


def test_allow_policies_admit_only_what_one_of_them_matches() -> None:
    e = Engine(policies({"name": "ns/read", "rules": [{"operations": [
        {"methods": ["GET", "HEAD"], "paths": ["/api/*", "/health"]}]}]}))
    assert decide(e, h=head(path=b"/api/x"))[:2] == (True, "ns/read")
    assert decide(e, h=head(path=b"/health"))[0] is True
    assert decide(e, h=head(path=b"/healthz"))[0] is False  # exact, not a prefix
    assert decide(e, h=head(b"POST", b"/api/x"))[:2] == (False, "ns/read")


def test_an_allow_policy_without_rules_denies_everything() -> None:
    e = Engine(policies({"name": "mesh/deny-all"}))
    assert decide(e)[:2] == (False, "mesh/deny-all")


def test_deny_beats_allow() -> None:
    e = Engine(policies({"name": "ns/all", "rules": [{}]},
                        {"name": "ns/block", "action": "DENY",
                         "rules": [{"sources": [{"ip_blocks": ["10.0.0.0/8"]}]}]}))
    assert decide(e, ip="10.1.2.3")[:2] == (False, "ns/block")
    assert decide(e, ip="192.168.0.1")[:2] == (True, "ns/all")
    assert decide(e, ip="::ffff:10.1.2.3")[0] is False  # IPv4-mapped checked as IPv4


def test_an_ipv4_mapped_block_matches_the_ipv4_peers_it_names() -> None:
    """Peers' IPv4-mapped addresses are compared as IPv4, so a block written in the mapped
    form names IPv4 peers too; until it did, such a DENY matched no one."""
    e = Engine(policies({"name": "ns/all", "rules": [{}]},
                        {"name": "ns/block", "action": "DENY",
                         "rules": [{"sources": [{"ip_blocks": ["::ffff:10.0.0.0/104"]}]}]}))
    assert decide(e, ip="10.1.2.3")[:2] == (False, "ns/block")
    assert decide(e, ip="::ffff:10.1.2.3")[:2] == (False, "ns/block")
    assert decide(e, ip="11.0.0.1")[:2] == (True, "ns/all")
    assert decide(e, ip="fd00::1")[:2] == (True, "ns/all")


def test_every_field_of_a_source_and_operation_must_match() -> None:
    e = Engine(policies({"name": "ns/p", "rules": [{
        "sources": [{"ip_blocks": ["127.0.0.0/8"], "principals": ["*"]}],
        "operations": [{"methods": ["GET"], "headers": [{"name": "X-Env",
                                                          "values": ["prod", "stag*"]}]}]}]}))
    ok = head(headers=[(b"x-env", b"staging")])
    assert decide(e, ip="127.0.0.1", identity=ALICE, h=ok)[0] is True
    assert decide(e, ip="127.0.0.1", h=ok)[0] is False  # no identity: `*` needs one
    assert decide(e, ip="10.0.0.1", identity=ALICE, h=ok)[0] is False
    assert decide(e, ip="127.0.0.1", identity=ALICE, h=head(headers=[(b"x-env", b"dev")]))[0] \
        is False
    assert decide(e, ip="127.0.0.1", identity=ALICE, h=head())[0] is False  # header missing


def test_identity_rules_match_the_spiffe_id_and_never_without_one() -> None:
    e = Engine(policies({"name": "ns/p", "rules": [
        {"sources": [{"namespaces": ["shop"]}]},
        {"sources": [{"service_accounts": ["ops/admin"]}]},
        {"sources": [{"principals": ["spiffe://mesh.local/ns/batch/*"]}]}]}))
    assert decide(e, identity=ALICE)[0] is True
    assert decide(e, identity="spiffe://mesh.local/ns/ops/sa/admin")[0] is True
    assert decide(e, identity="spiffe://mesh.local/ns/ops/sa/intern")[0] is False
    assert decide(e, identity="spiffe://mesh.local/ns/batch/sa/job")[0] is True
    assert decide(e, identity=EVE)[0] is False
    assert decide(e, identity="")[0] is False  # plaintext peer: identity rules never match
    # a workload posing as another by a look-alike ID that is not a SPIFFE ID of that namespace
    assert decide(e, identity="spiffe://mesh.local/ns/shop")[0] is False


def test_audit_counts_without_deciding() -> None:
    e = Engine(policies({"name": "ns/audit", "action": "AUDIT",
                         "rules": [{"operations": [{"paths": ["/pay*"]}]}]}))
    allowed, _, events = decide(e, h=head(path=b"/payments"))
    assert allowed is True
    assert ("ns/audit", "AUDIT", "audit") in events


def test_dry_run_never_refuses_but_counts_what_it_would(caplog: pytest.LogCaptureFixture) -> None:
    e = Engine(policies({"name": "ns/strict", "dry_run": True},
                        {"name": "ns/no-admin", "action": "DENY", "dry_run": True,
                         "rules": [{"operations": [{"paths": ["/admin*"]}]}]}))
    caplog.set_level("INFO", "tulle.authz")
    allowed, policy, events = decide(e, h=head(path=b"/admin?token=s3cret"))
    assert allowed is True and policy == "-"
    assert events[1] == ("ns/no-admin", "DENY", "dry_run_deny")
    assert "would deny GET /admin" in caplog.text and "s3cret" not in caplog.text
    assert "from 10.0.0.1 -" in caplog.text  # the peer's address as written, not its key
    assert decide(e, h=head(path=b"/x"))[2][1] == ("ns/strict", "ALLOW", "dry_run_deny")


def test_at_l4_http_fields_fail_closed() -> None:
    e = Engine(policies({"name": "ns/get-only", "rules": [{"operations": [{"methods": ["GET"]}]}]},
                        {"name": "ns/net", "rules": [{"sources": [{"ip_blocks": ["10.0.0.0/8"]}]}]}))
    assert decide(e, ip="10.0.0.1", l4=True)[:2] == (True, "ns/net")
    assert decide(e, ip="192.168.1.1", l4=True)[0] is False  # GET-only never matches TCP
    d = Engine(policies({"name": "ns/d", "action": "DENY", "rules": [
        {"sources": [{"ip_blocks": ["10.0.0.0/8"]}], "operations": [{"paths": ["/x"]}]}]}))
    assert decide(d, ip="10.0.0.1", l4=True)[0] is False  # DENY ignores the HTTP fields
    assert decide(d, ip="192.168.1.1", l4=True)[0] is True


class Port:
    def __init__(self, identity: str = "") -> None:
        self.facts = ConnectionFacts("inbound|80", "inbound", ("127.0.0.1", 5555))
        self.facts.peer_identity = identity
        self.replies: list[tuple[int, bytes]] = []
        self.counted: list[tuple[str, str, str]] = []
        self.authz = ""
        self.flags = ""

    def filters_continue(self) -> None:
        raise AssertionError("authz never stops")

    def filter_reply(self, status: int, body: bytes) -> None:
        self.replies.append((status, body))

    def filter_error(self, name: str) -> None:
        raise AssertionError(name)

    def authz_decision(self, policy: str, action: str, result: str) -> None:
        self.counted.append((policy, action, result))


def run(cfg: Authorization, h: RequestHead, identity: str = "") -> Port:
    chain = build_chain([factory_for(cfg)])
    assert chain is not None
    p = Port(identity)
    ChainRun(chain, h, p, p).request_head()  # type: ignore[arg-type]
    return p


def test_the_filter_answers_403_naming_the_policy_counts_and_records() -> None:
    cfg = Authorization(policies=policies(
        {"name": "shop/only-alice", "rules": [{"sources": [{"principals": [ALICE]}]}]}))
    p = run(cfg, head(path=b"/?q=1"), EVE)
    assert p.replies == [(403, b"RBAC: access denied: no ALLOW policy matched "
                               b"(shop/only-alice)\n")]
    assert p.counted == [("shop/only-alice", "ALLOW", "deny")]
    assert (p.authz, p.flags) == ("deny:shop/only-alice", "RBAC")
    p = run(cfg, head(), ALICE)
    assert p.replies == [] and p.authz == "allow:shop/only-alice"


def test_the_filter_config_refuses_bad_values_with_paths() -> None:
    from tulle.proxyconfig.filters import errors
    cfg = Authorization(policies=policies(
        {"name": "a", "rules": [{"sources": [{"ip_blocks": ["10.0.0.300/8"],
                                              "namespaces": ["Bad_NS"],
                                              "service_accounts": ["nosa"],
                                              "principals": ["spiffe://*/x"]}],
                                 "operations": [{"paths": ["api"], "methods": ["get"]}]}]},
        {"name": "a"}))
    assert sorted(str(e) for e in errors(cfg, "f")) == sorted([
        "f.policies[0].rules[0].sources[0].principals[0]: `*` may only start or end a "
        "pattern: 'spiffe://*/x'",
        "f.policies[0].rules[0].sources[0].namespaces[0]: not a namespace name or \"*\": "
        "'Bad_NS'",
        "f.policies[0].rules[0].sources[0].service_accounts[0]: not namespace/account: 'nosa'",
        "f.policies[0].rules[0].sources[0].ip_blocks[0]: not an IP address or CIDR: "
        "'10.0.0.300/8'",
        "f.policies[0].rules[0].operations[0].paths[0]: must start with \"/\": 'api'",
        "f.policies[0].rules[0].operations[0].methods[0]: not an upper-case method: 'get'",
        "f.policies[1].name: duplicate policy name 'a'"])


def test_a_deny_on_a_header_holds_for_each_value_and_list_element_allow_stays_whole() -> None:
    """Attack review A1: `x-debug: true` sent twice, or as `x, true`, dodged a DENY on
    "true" (the joined value was compared); an ALLOW is not widened by the same rule."""
    deny = Engine(policies({"name": "ns/no-debug", "action": "DENY", "rules": [{"operations": [
        {"headers": [{"name": "x-debug", "values": ["true"]}]}]}]}))
    for fields in ([(b"x-debug", b"true")], [(b"x-debug", b"true"), (b"x-debug", b"true")],
                   [(b"x-debug", b"x"), (b"x-debug", b"true")], [(b"x-debug", b"true, true")],
                   [(b"x-debug", b"no,\ttrue")]):
        assert decide(deny, h=head(headers=fields))[:2] == (False, "ns/no-debug"), fields
    assert decide(deny, h=head(headers=[(b"x-debug", b"truer, untrue")]))[0] is True
    allow = Engine(policies({"name": "ns/admins", "rules": [{"operations": [
        {"headers": [{"name": "x-role", "values": ["admin"]}]}]}]}))
    assert decide(allow, h=head(headers=[(b"x-role", b"admin")]))[0] is True
    assert decide(allow, h=head(headers=[(b"x-role", b"user"), (b"x-role", b"admin")]))[0] \
        is False
    assert decide(allow, h=head(headers=[(b"x-role", b"user, admin")]))[0] is False


def test_a_deny_on_a_path_holds_for_path_parameters_and_escaped_slashes() -> None:
    deny = Engine(policies({"name": "ns/no-admin", "action": "DENY", "rules": [{"operations": [
        {"paths": ["/admin", "/admin/*"]}]}]}))
    for path in (b"/admin;jsessionid=1", b"/admin/;x/users", b"/admin%2Fusers", b"/admin%2f",
                 b"/admin%5Cusers", b"/public/..;/admin", b"/public%2F..%2Fadmin"):
        assert decide(deny, h=head(path=path))[:2] == (False, "ns/no-admin"), path
    for path in (b"/public;x", b"/public%2Fadmin", b"/administrator"):
        assert decide(deny, h=head(path=path))[0] is True, path
    allow = Engine(policies({"name": "ns/public", "rules": [{"operations": [
        {"paths": ["/public/*"]}]}]}))
    assert decide(allow, h=head(path=b"/public/x"))[0] is True
    # the variants are for DENY only: an ALLOW never admits more than the path itself says
    assert decide(allow, h=head(path=b"/public%2Fx"))[0] is False
    assert decide(allow, h=head(path=b"/x/..;/public/x"))[0] is False


def test_namespaces_and_accounts_read_only_the_listed_trust_domains() -> None:
    # ADR 0096: a sibling CA under the same root could sign spiffe://staging.example/ns/shop/
    # sa/alice; it is no account of this mesh.  An alias is (the compiler lists it).
    e = Engine(policies({"name": "shop/only-alice", "action": "ALLOW", "rules": [{"sources": [
        {"service_accounts": ["shop/alice"], "trust_domains": ["mesh.local", "old.local"]}]}]},
        {"name": "shop/any-in-shop", "action": "AUDIT", "rules": [{"sources": [
            {"namespaces": ["shop"], "trust_domains": ["mesh.local"]}]}]}))
    assert decide(e, identity=ALICE)[0]
    assert decide(e, identity="spiffe://old.local/ns/shop/sa/alice")[0]
    allowed, _, events = decide(e, identity="spiffe://staging.example/ns/shop/sa/alice")
    assert not allowed
    assert not any(p == "shop/any-in-shop" for p, _, _ in events)  # the AUDIT did not match
    assert not decide(e, identity="spiffe://staging.example/ns/shop/sa/alice", l4=True)[0]
    # Without the field (a config from before it): any trust domain, as before.
    old = Engine(policies({"name": "shop/only-alice", "action": "ALLOW", "rules": [{"sources": [
        {"service_accounts": ["shop/alice"]}]}]}))
    assert decide(old, identity="spiffe://staging.example/ns/shop/sa/alice")[0]
