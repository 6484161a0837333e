"""The resolver's decision per query, without sockets: mesh answers, NXDOMAIN only under the
mesh domain, forwards for the rest, FORMERR / drops for bad bytes."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode

from tulle.dataplane.dns import resolver
from tulle.dataplane.dns.server import resolv_conf_upstreams
from tulle.dataplane.dns.table import EMPTY, build
from tulle.proxyconfig.model import DNS, DNSHost

CFG = DNS(hosts=[DNSHost(service="catalog", namespace="shop", addresses=["10.96.0.7"]),
                 DNSHost(service="many", namespace="shop",
                         addresses=[f"10.96.1.{i}" for i in range(1, 17)]),
                 DNSHost(service="web", namespace="default", addresses=["fd00::9"])],
          ttl_s=7)
TABLE = build(CFG, "shop")


def ask(name: str, rtype: str = "A", udp: bool = True, **kw: object) -> resolver.Decision:
    return resolver.decide(dns.message.make_query(name, rtype, **kw).to_wire(), TABLE, udp)  # type: ignore[arg-type]


def test_the_four_forms_and_only_them_are_mesh_names() -> None:
    for name in ("catalog.shop.svc.cluster.local", "catalog.shop.mesh", "catalog.shop",
                 "catalog", "CaTaLoG.sHoP.SVC.Cluster.Local."):
        d = ask(name)
        assert d.result == resolver.MESH and d.reply is not None, name
        r = dns.message.from_wire(d.reply)
        assert [x.address for x in r.answer[0]] == ["10.96.0.7"] and r.answer[0].ttl == 7
    assert ask("web").result == resolver.FORWARDED  # another namespace's bare name
    assert ask("web.default").result == resolver.MESH
    assert ask("catalog.shop.svc").result == resolver.FORWARDED
    assert ask("catalog.other.svc.cluster.local").result == resolver.FORWARDED


def test_any_answers_both_families_and_other_types_are_nodata() -> None:
    d = ask("web.default", "ANY")
    assert d.reply is not None
    assert [x.address for x in dns.message.from_wire(d.reply).answer[0]] == ["fd00::9"]
    for rtype in ("A", "SRV", "HTTPS"):
        d = ask("web.default", rtype)
        assert d.reply is not None
        r = dns.message.from_wire(d.reply)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer


def test_the_mesh_domain_is_authoritative_the_cluster_domain_is_not() -> None:
    d = ask("ghost.shop.mesh")
    assert d.result == resolver.NXDOMAIN and d.reply is not None
    assert dns.message.from_wire(d.reply).rcode() == dns.rcode.NXDOMAIN
    assert ask("ghost.shop.svc.cluster.local").result == resolver.FORWARDED
    assert ask("notmesh").result == resolver.FORWARDED


def test_a_class_other_than_in_is_forwarded() -> None:
    q = dns.message.make_query("catalog.shop", "A", rdclass="CH")
    assert resolver.decide(q.to_wire(), TABLE, True).result == resolver.FORWARDED


def test_an_answer_too_big_for_plain_udp_is_truncated_not_over_tcp_or_edns() -> None:
    d = ask("many.shop")  # 16 A records: 12 + 14 + 16 * 16 = 282 bytes, fits
    assert d.reply is not None and not dns.message.from_wire(d.reply).flags & dns.flags.TC
    big = DNS(hosts=[DNSHost(service="x", namespace="shop",
                             addresses=[f"fd00::{i:x}" for i in range(1, 17)])])
    table = build(big, "shop")
    q = dns.message.make_query("x.shop", "AAAA").to_wire()  # 16 * 28 + 28 = 476: fits
    reply = resolver.decide(q, table, True).reply
    assert reply is not None and len(dns.message.from_wire(reply).answer[0]) == 16
    long_name = DNS(hosts=[DNSHost(service="x" * 63, namespace="y" * 63,
                                   addresses=[f"fd00::{i:x}" for i in range(1, 17)])])
    table = build(long_name, "shop")
    name = f"{'x' * 63}.{'y' * 63}.svc.cluster.local"
    d = resolver.decide(dns.message.make_query(name, "AAAA").to_wire(), table, True)
    assert d.reply is not None and dns.message.from_wire(d.reply).flags & dns.flags.TC
    d = resolver.decide(dns.message.make_query(name, "AAAA").to_wire(), table, False)
    assert d.reply is not None and len(dns.message.from_wire(d.reply).answer[0]) == 16
    d = resolver.decide(dns.message.make_query(name, "AAAA", use_edns=0).to_wire(), table, True)
    assert d.reply is not None and len(dns.message.from_wire(d.reply).answer[0]) == 16


def test_bad_bytes_are_formerr_or_dropped() -> None:
    assert resolver.decide(b"\x00", TABLE, True) == resolver.Decision(resolver.DROPPED)
    d = resolver.decide(b"\x12\x34\x01\x00\x00\x02" + b"\x00" * 6, TABLE, True)
    assert d.result == resolver.FORMERR and d.reply is not None
    assert dns.message.from_wire(d.reply).rcode() == dns.rcode.FORMERR


def test_resolv_conf_nameservers_are_read_and_junk_skipped(tmp_path: object) -> None:
    from pathlib import Path
    conf = Path(str(tmp_path)) / "resolv.conf"
    conf.write_text("# comment\nsearch a b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
                    "nameserver not-an-ip\nnameserver\noptions ndots:5\n")
    assert resolv_conf_upstreams(str(conf)) == (("10.0.0.2", 53), ("fe80::1", 53))
    assert resolv_conf_upstreams(str(conf) + ".missing") == ()


def test_a_label_holding_a_dot_is_never_a_mesh_name() -> None:
    """The one label `catalog.shop` (or `catalog.shop.mesh`, or `catalog.shop` under `mesh`)
    is not the name its dots spell: forwarded as it came, never the VIP nor NXDOMAIN."""
    import struct
    for labels in ((b"catalog.shop",), (b"catalog.shop.mesh",), (b"catalog", b"shop.mesh"),
                   (b"catalog.shop", b"mesh")):
        name = b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
        data = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
        d = resolver.decide(data, TABLE, True)
        assert d.result == resolver.FORWARDED and d.reply is None, labels


def test_an_edns_version_past_0_is_badvers_for_names_answered_here_and_forwarded_else() -> None:
    """RFC 6891 6.1.3 for what the proxy answers itself (a mesh name, an unknown `.mesh` name);
    a forwarded name goes upstream as it came, whose responder answers the version."""
    for name in ("catalog.shop", "catalog.shop.mesh", "ghost.shop.mesh"):
        d = ask(name, use_edns=1)
        assert d.result == resolver.FORMERR and d.reply is not None, name
        r = dns.message.from_wire(d.reply)
        assert r.rcode() == dns.rcode.BADVERS and r.edns == 0 and not r.answer, name
    d = ask("example.org", use_edns=1)
    assert d.result == resolver.FORWARDED and d.reply is None
    d = ask("catalog.shop", use_edns=0)
    assert d.result == resolver.MESH and d.reply is not None
    assert dns.message.from_wire(d.reply).answer


def test_the_parents_of_mesh_names_in_its_zones_exist_with_no_records() -> None:
    """RFC 8020 / RFC 4592 2.2.2: `shop.mesh` and the apex `mesh` exist because
    `catalog.shop.mesh` does, as `shop.svc.cluster.local` and `svc.cluster.local` do for the
    cluster-domain form: NOERROR with no records (NODATA) for every type, never NXDOMAIN.
    The cluster domain's own apex and above, and the parents of the search-path forms
    (`shop`: a public TLD's name), are not the proxy's: forwarded."""
    for name in ("shop.mesh", "mesh", "MESH.", "default.mesh", "shop.svc.cluster.local",
                 "svc.cluster.local", "Default.SVC.cluster.local"):
        for rtype in ("A", "AAAA", "ANY", "SOA", "NS", "TXT"):
            d = ask(name, rtype)
            assert d.result == resolver.MESH and d.reply is not None, (name, rtype)
            r = dns.message.from_wire(d.reply)
            assert r.rcode() == dns.rcode.NOERROR and not r.answer, (name, rtype)
            assert r.flags & dns.flags.AA
    for name in ("cluster.local", "local", "shop", "default", "other.svc.cluster.local"):
        assert ask(name).result == resolver.FORWARDED, name
    for name in ("other.mesh", "ghost.shop.mesh", "below.catalog.shop.mesh"):
        assert ask(name).result == resolver.NXDOMAIN, name
    d = ask("shop.mesh", use_edns=1)
    assert d.reply is not None
    assert dns.message.from_wire(d.reply).rcode() == dns.rcode.BADVERS


def test_the_mesh_apex_exists_without_services_and_the_cluster_parents_only_with_them() -> None:
    empty = build(DNS(hosts=[]), "shop")
    assert empty.names == {b"mesh": EMPTY}
    for name, result in (("mesh", resolver.MESH), ("shop.mesh", resolver.NXDOMAIN),
                         ("svc.cluster.local", resolver.FORWARDED)):
        d = resolver.decide(dns.message.make_query(name, "A").to_wire(), empty, True)
        assert d.result == result, name


def test_a_two_label_mesh_domain_has_its_apex_and_not_its_parent() -> None:
    t = build(DNS(mesh_domain="mesh.internal",
                  hosts=[DNSHost(service="c", namespace="x", addresses=["10.0.0.1"])]), "x")
    assert t.lookup(b"x.mesh.internal") is EMPTY and t.lookup(b"mesh.internal") is EMPTY
    assert t.lookup(b"internal") is None
