"""The `dns` section: refused with field paths when wrong, carried by deltas, withheld from
proxies that lack the feature."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.proxyconfig.delta import UNITS, WHOLE, Delta, DeltaError, apply_delta, diff
from tulle.proxyconfig.dns import empty_names, empty_non_terminals, upstream_address
from tulle.proxyconfig.dns_delta import DnsHostsDelta
from tulle.proxyconfig.features import BY_NAME, withhold_config, withhold_delta
from tulle.proxyconfig.model import DNS, DNSHost, ProxyConfig
from tulle.proxyconfig.stream import apply_checked, decode_delta
from tulle.proxyconfig.validate import ConfigError, validate


def errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return [str(e) for e in info.value.errors]


def test_a_good_section_validates() -> None:
    cfg = validate({"dns": {"upstreams": ["10.0.0.2", "10.0.0.3:5353", "[fd00::1]:53"],
                            "hosts": [{"service": "a", "namespace": "b",
                                       "addresses": ["10.96.0.1", "fd00::1"]}]}})
    assert cfg.dns is not None and cfg.dns.port == 15053


@pytest.mark.parametrize(("dns", "expected"), [
    ({"address": "localhost"}, "dns.address: must be an IP address"),
    ({"upstreams": ["dns.google"]}, "dns.upstreams[0]: not an ip[:port]"),
    ({"upstreams": ["10.0.0.1:0"]}, "dns.upstreams[0]: not an ip[:port]"),
    ({"upstreams": ["[fd00::1"]}, "dns.upstreams[0]: not an ip[:port] (missing ']')"),
    ({"hosts": [{"service": "a", "namespace": "b", "addresses": ["x"]}]},
     "dns.hosts[0].addresses[0]: must be an IP address"),
    ({"hosts": [{"service": "a", "namespace": "b", "addresses": ["10.0.0.1"]}] * 2},
     "dns.hosts[1]: duplicate host a.b"),
    ({"hosts": [{"service": "A.b", "namespace": "b", "addresses": ["10.0.0.1"]}]},
     "dns.hosts[0].service"),
    ({"hosts": [{"service": "a", "namespace": "b", "addresses": []}]},
     "dns.hosts[0].addresses"),
    ({"ttl_s": -1}, "dns.ttl_s"),
    ({"max_tcp_message_bytes": 100}, "dns.max_tcp_message_bytes"),
    ({"port": 15001, "address": "127.0.0.1"}, "dns.port: 127.0.0.1:15001 is also listener"),
    ({"colour": "blue"}, "dns.colour: unknown field"),
])
def test_bad_values_are_refused_with_their_path(dns: dict[str, Any], expected: str) -> None:
    raw = {"dns": dns, "listeners": [{"name": "out", "port": 15001, "cluster": "c"}],
           "clusters": [{"name": "c"}]}
    assert any(expected in e for e in errors(raw)), errors(raw)


def test_upstream_address_forms() -> None:
    assert upstream_address("10.0.0.2") == ("10.0.0.2", 53)
    assert upstream_address("[::1]:5353") == ("::1", 5353)
    assert upstream_address("::1") == ("::1", 53)


HOSTS = [DNSHost(service="a", namespace="b", addresses=["10.96.0.1"])]


def test_deltas_carry_a_changed_section_and_its_removal() -> None:
    a = ProxyConfig(version="1")
    b = ProxyConfig(version="2", dns=DNS(hosts=HOSTS))
    c = ProxyConfig(version="3", dns=DNS(hosts=[*HOSTS, DNSHost(
        service="c", namespace="b", addresses=["10.96.0.2"])]))
    d = ProxyConfig(version="4")
    for old, new in ((a, b), (b, c), (c, d), (b, b)):
        delta = diff(old, new)
        assert apply_delta(old, delta) == msgspec.structs.replace(new, version=delta.version)
    assert diff(c, d).dns_removed and diff(b, b).dns is None
    same = ProxyConfig(version="5", dns=DNS(hosts=HOSTS))
    assert diff(b, same).empty


def test_a_proxy_without_the_feature_gets_no_section_in_snapshots_or_deltas() -> None:
    doc = msgspec.to_builtins(ProxyConfig(dns=DNS(hosts=HOSTS)))
    withhold_config(doc, [BY_NAME["dns"]])
    assert "dns" not in doc
    validate(doc)
    ddoc = msgspec.to_builtins(diff(ProxyConfig(), ProxyConfig(version="2", dns=DNS())))
    withhold_delta(ddoc, [BY_NAME["dns"]])
    assert "dns" not in ddoc
    ddoc = msgspec.to_builtins(diff(ProxyConfig(dns=DNS()), ProxyConfig(version="2")))
    assert ddoc["dns_removed"] is True
    withhold_delta(ddoc, [BY_NAME["dns"]])
    assert "dns_removed" not in ddoc


# -- the `delta-dns-hosts` unit -----------------------------------------------------------

@st.composite
def dns_snapshots(draw: st.DrawFn) -> ProxyConfig:
    if draw(st.booleans()) and draw(st.booleans()):
        return ProxyConfig(version=str(draw(st.integers(0, 99))))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, max_size=5))
    hosts = [DNSHost(service=k, namespace=draw(st.sampled_from(["x", "y"])) if k == "e" else "x",
                     addresses=[f"10.96.0.{draw(st.integers(1, 3))}"]) for k in keys]
    return ProxyConfig(version=str(draw(st.integers(0, 99))),
                       dns=DNS(hosts=hosts, ttl_s=draw(st.sampled_from([5, 5, 30]))))


@settings(max_examples=300, deadline=None)
@given(dns_snapshots(), dns_snapshots(), st.sampled_from([UNITS, WHOLE]))
def test_diff_then_apply_rebuilds_the_dns_section(a: ProxyConfig, b: ProxyConfig,
                                                  units: frozenset[str]) -> None:
    b = msgspec.structs.replace(b, version=a.version + "+")
    d = diff(a, b, units)
    assert apply_delta(a, d) == b
    wire = msgspec.json.encode(d)  # and through the stream's decoder
    assert apply_checked(a, decode_delta(msgspec.Raw(wire))) == b
    if units == WHOLE:
        assert d.dns_hosts is None


def test_a_new_service_sends_one_host_not_the_list() -> None:
    many = [DNSHost(service=f"s{i}", namespace="x", addresses=[f"10.96.1.{i}"])
            for i in range(1, 200)]
    a = ProxyConfig(version="1", dns=DNS(hosts=many))
    b = ProxyConfig(version="2", dns=DNS(hosts=[*many, DNSHost(service="t", namespace="x",
                                                               addresses=["10.96.2.1"])]))
    d = diff(a, b)
    assert d.dns is None and d.dns_hosts is not None
    assert d.dns_hosts.upsert == [{"service": "t", "namespace": "x", "addresses": ["10.96.2.1"]}]
    assert not d.dns_hosts.order and len(msgspec.json.encode(d)) < 200
    # Changed beyond its hosts (the TTL): sent whole.
    c = ProxyConfig(version="3", dns=DNS(hosts=many, ttl_s=30))
    assert diff(a, c).dns is not None and diff(a, c).dns_hosts is None


@pytest.mark.parametrize(("patch", "message"), [
    (DnsHostsDelta(remove=["x/nope"]), "cannot remove unknown DNS host 'x/nope'"),
    (DnsHostsDelta(upsert=[{"service": "t", "namespace": "x", "addresses": ["10.0.0.1"]}] * 2),
     "upserted twice"),
    (DnsHostsDelta(order=["x/zzz"]), "order does not list the same hosts"),
])
def test_a_hosts_patch_that_does_not_fit_is_refused(patch: DnsHostsDelta, message: str) -> None:
    base = ProxyConfig(version="1", dns=DNS(hosts=HOSTS))
    with pytest.raises(DeltaError, match=message):
        apply_delta(base, Delta(version="2", base_version="1", dns_hosts=patch))
    with pytest.raises(DeltaError, match="no dns section"):
        apply_delta(ProxyConfig(version="1"), Delta(version="2", base_version="1",
                                                    dns_hosts=patch))


def test_the_empty_non_terminals_are_the_parents_inside_the_zones_only() -> None:
    names = [b"a.b.svc.cluster.local", b"a.b.mesh", b"a.b", b"a", b"c.x.y.mesh.internal"]
    zones = (b"mesh", b"svc.cluster.local", b"mesh.internal")
    assert empty_non_terminals(names, zones) == {
        b"b.svc.cluster.local", b"svc.cluster.local", b"b.mesh", b"mesh", b"x.y.mesh.internal",
        b"y.mesh.internal", b"mesh.internal"}
    # a parent that is itself a name is not empty; a zone merely ending like one is no zone
    assert empty_non_terminals([b"a.b.mesh", b"b.mesh", b"a.notmesh"], (b"mesh",)) == {b"mesh"}


def test_the_empty_names_hold_the_mesh_apex_even_with_no_service() -> None:
    assert empty_names([], "cluster.local", "mesh") == {b"mesh"}
    assert empty_names([b"web.shop.svc.cluster.local", b"web.shop.mesh"], "cluster.local",
                       "mesh") == {b"shop.svc.cluster.local", b"svc.cluster.local",
                                   b"shop.mesh", b"mesh"}
