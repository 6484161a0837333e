"""The `dns` section: refused with field paths when wrong, carried by deltas, withheld from
proxies that lack the feature."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tulle.proxyconfig.delta import apply_delta, diff
from tulle.proxyconfig.dns import upstream_address
from tulle.proxyconfig.features import BY_NAME, withhold_config, withhold_delta
from tulle.proxyconfig.model import DNS, DNSHost, ProxyConfig
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
