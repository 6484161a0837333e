"""Filter-chain selection: the most specific chain wins, field by field in the declared order
(destination port, destination address, server name, transport, ALPN), and an earlier field is
never reconsidered."""

from __future__ import annotations

from typing import Any

from tulle.dataplane.listeners.chains import ChainRule, build_rules, by_destination, select
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.model import FilterChain, FilterChainMatch, Listener


def rules(*chains: tuple[str, dict[str, Any]], **listener: Any) -> tuple[ChainRule, ...]:
    cfg = Listener(name="l", port=1, filter_chains=[
        FilterChain(name=name, match=FilterChainMatch(**m), cluster="c") for name, m in chains],
        **listener)
    got, _ = build_rules(cfg, {}, None, ProxyMetrics(), None)
    return got


def pick(chains: tuple[ChainRule, ...], ip: str = "10.0.0.1", port: int = 80,
         transport: str = "plaintext", sni: str | None = None,
         alpn: tuple[str, ...] = ()) -> str | None:
    c = select(chains, ip, port, transport, sni, alpn)
    return None if c is None else c.name


def test_an_empty_match_takes_everything() -> None:
    chains = rules(("all", {}))
    assert pick(chains) == "all"
    assert pick(chains, transport="tls", sni="x.y", alpn=("h2",)) == "all"


def test_transport_tls_versus_plaintext() -> None:
    chains = rules(("tls", {"transport": "tls"}), ("plain", {"transport": "plaintext"}))
    assert pick(chains, transport="tls") == "tls"
    assert pick(chains, transport="plaintext") == "plain"


def test_alpn_any_offered_protocol_matches_and_beats_an_empty_list() -> None:
    chains = rules(("h2", {"transport": "tls", "alpn": ["h2"]}),
                   ("tls", {"transport": "tls"}))
    assert pick(chains, transport="tls", alpn=("http/1.1", "h2")) == "h2"
    assert pick(chains, transport="tls", alpn=("http/1.1",)) == "tls"
    assert pick(chains, transport="tls") == "tls"


def test_server_names_exact_beats_the_longest_wildcard_beats_a_shorter_one() -> None:
    chains = rules(("exact", {"server_names": ["api.shop.example.com"]}),
                   ("shop", {"server_names": ["*.shop.example.com"]}),
                   ("example", {"server_names": ["*.example.com"]}),
                   ("any", {}))
    assert pick(chains, transport="tls", sni="api.shop.example.com") == "exact"
    assert pick(chains, transport="tls", sni="web.shop.example.com") == "shop"
    assert pick(chains, transport="tls", sni="a.b.shop.example.com") == "shop"
    assert pick(chains, transport="tls", sni="www.example.com") == "example"
    assert pick(chains, transport="tls", sni="example.com") == "any"  # `*.x` needs a label
    assert pick(chains, transport="tls", sni=None) == "any"  # no SNI: only empty lists
    assert pick(chains, transport="tls", sni="other.org") == "any"


def test_destination_port_then_longest_prefix() -> None:
    chains = rules(("p443", {"destination_port": 443}),
                   ("net8", {"destination": ["10.0.0.0/8"]}),
                   ("net24", {"destination": ["192.0.2.0/24", "10.1.2.0/24"]}),
                   ("any", {}))
    assert pick(chains, ip="10.1.2.3", port=443) == "p443"
    assert pick(chains, ip="10.1.2.3", port=80) == "net24"
    assert pick(chains, ip="10.9.9.9", port=80) == "net8"
    assert pick(chains, ip="172.16.0.1", port=80) == "any"
    assert pick(chains, ip="::ffff:10.1.2.3", port=80) == "net24"  # IPv4-mapped
    assert pick(chains, ip="2001:db8::1", port=80) == "any"


def test_a_destination_written_ipv4_mapped_matches_ipv4_destinations() -> None:
    chains = rules(("mapped", {"destination": ["::ffff:10.1.2.0/120"]}), ("any", {}))
    assert pick(chains, ip="10.1.2.3", port=80) == "mapped"
    assert pick(chains, ip="::ffff:10.1.2.3", port=80) == "mapped"
    assert pick(chains, ip="10.1.3.3", port=80) == "any"


def test_an_earlier_field_is_never_reconsidered() -> None:
    """Envoy's rule: the port narrows first; a TLS connection to port 443 does not fall back
    to the port-less TLS chain when the port-443 chain wants plaintext."""
    chains = rules(("443-plain", {"destination_port": 443, "transport": "plaintext"}),
                   ("tls", {"transport": "tls"}))
    assert pick(chains, port=443, transport="tls") is None
    assert pick(chains, port=80, transport="tls") == "tls"
    assert pick(chains, port=443, transport="plaintext") == "443-plain"


def test_server_name_is_decided_before_transport_and_alpn() -> None:
    chains = rules(("named", {"server_names": ["a.example"]}),
                   ("h2", {"transport": "tls", "alpn": ["h2"]}))
    assert pick(chains, transport="tls", sni="a.example", alpn=("h2",)) == "named"
    assert pick(chains, transport="tls", sni="b.example", alpn=("h2",)) == "h2"
    assert pick(chains, transport="tls", sni="b.example", alpn=("http/1.1",)) is None


def test_by_destination_leaves_the_candidates_the_hello_decides_between() -> None:
    chains = rules(("a", {"destination_port": 80, "transport": "tls"}),
                   ("b", {"destination_port": 80, "transport": "plaintext"}),
                   ("c", {"destination_port": 81}))
    assert [c.name for c in by_destination(chains, "127.0.0.1", 80)] == ["a", "b"]
    assert [c.name for c in by_destination(chains, "127.0.0.1", 82)] == []


def test_which_chains_need_the_first_bytes() -> None:
    cfg = Listener(name="l", port=1, cluster="c", protocol="tcp", filter_chains=[
        FilterChain(name="port", match=FilterChainMatch(destination_port=5432),
                    protocol="tcp", cluster="c"),
        FilterChain(name="sni", match=FilterChainMatch(server_names=["a.b"]), protocol="tcp",
                    cluster="c"),
        FilterChain(name="auto", match=FilterChainMatch(destination_port=80), cluster="c")])
    chains, default = build_rules(cfg, {}, None, ProxyMetrics(), None)
    assert [c.inspects for c in chains] == [False, True, True]
    assert default is not None and default.name == "" and not default.inspects


def test_alpn_follows_the_clients_preference_not_the_list_order() -> None:
    """Two chains on different protocols, a client offering both: Envoy walks the client's
    offers in order (`findFilterChainForApplicationProtocols`); so does Tulle, whichever
    chain is listed first."""
    for order in ((0, 1), (1, 0)):
        both = [("h1", {"transport": "tls", "alpn": ["http/1.1"]}),
                ("h2", {"transport": "tls", "alpn": ["h2"]})]
        chains = rules(*(both[i] for i in order))
        assert pick(chains, transport="tls", alpn=("h2", "http/1.1")) == "h2"
        assert pick(chains, transport="tls", alpn=("http/1.1", "h2")) == "h1"
        assert pick(chains, transport="tls", alpn=("x",) * 999 + ("h2",)) == "h2"
