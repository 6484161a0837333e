"""Filter-chain configs the proxy cannot serve as written are refused, each with its path."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig import ConfigError, validate


def listener(*chains: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "l", "port": 1, "filter_chains": list(chains), **extra}],
            "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 2}]}]}


def errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    return [str(e) for e in err.value.errors]


def test_a_listener_with_chains_needs_no_routing_of_its_own() -> None:
    cfg = validate(listener({"name": "a", "cluster": "c"}))
    assert cfg.listeners[0].filter_chains[0].match.transport == "any"


def test_bad_chains_are_refused_with_their_paths() -> None:
    got = errors(listener(
        {"name": "a", "cluster": "c", "match": {"destination": ["10.0.0.0/33"],
                                                "server_names": ["a..b", "*.ok.example"]}},
        {"name": "a", "route_table": "none", "match": {"transport": "plaintext",
                                                        "alpn": ["h2"]}},
        {"name": "t", "cluster": "c", "protocol": "tcp", "tls": {"cert_file": "/x"},
         "match": {"transport": "any", "destination_port": 9}},
        {"name": "n", "cluster": "c", "protocol": "http1",
         "network_filters": [{"type": "flow_log"}], "match": {"destination_port": 10}},
        {"name": "same", "cluster": "c", "match": {"server_names": ["ok.example"]}},
        {"name": "same2", "cluster": "c", "match": {"server_names": ["OK.example"]}},
    ))
    assert got == [
        "listeners[0].filter_chains[0].match.destination[0]: not an IP address or CIDR: "
        "'10.0.0.0/33'",
        "listeners[0].filter_chains[0].match.server_names[0]: must be a host name or `*.` and "
        "a domain, got 'a..b'",
        "listeners[0].filter_chains[1].name: duplicate name 'a'",
        "listeners[0].filter_chains[1].match: server_names and alpn need transport `tls` or "
        "`any`",
        "listeners[0].filter_chains[1].route_table: no route table named 'none'",
        "listeners[0].filter_chains[2].match.transport: must be `tls` on a chain that "
        "terminates TLS",
        "listeners[0].filter_chains[2].tls: needs an identity or cert_file and key_file",
        "listeners[0].filter_chains[3].network_filters: only a chain with protocol `tcp` "
        "takes network filters (this one is 'http1')",
        "listeners[0].filter_chains[5].match: the same match as filter_chains[4]: one of them "
        "would never be chosen",
    ]


def test_chains_and_destinations_do_not_mix() -> None:
    got = errors(listener({"name": "a", "cluster": "c"}, mode="transparent",
                          destinations=[{"cluster": "c"}]))
    assert got == ["listeners[0].filter_chains: not together with destinations"]


def test_a_destination_in_the_ipv4_mapped_form_is_the_ipv4_range_it_names() -> None:
    """Destinations are matched as IPv4 when mapped (`proxyconfig.address.peer_ip`), so `::ffff:10.0.0.0/104`
    and `10.0.0.0/8` are one value: two chains naming it either way overlap."""
    got = errors(listener(
        {"name": "d", "cluster": "c", "match": {"destination": ["10.0.0.0/8"]}},
        {"name": "m", "cluster": "c", "match": {"destination": ["::ffff:10.0.0.0/104"]}},
    ))
    assert got == [
        "listeners[0].filter_chains[1].match: overlaps filter_chains[0] (destination "
        "'10.0.0.0/8'): a connection matching both would be decided by list order",
    ]


def test_chains_that_overlap_on_one_value_are_refused() -> None:
    """Envoy refuses two chains that share a value at every field ("multiple filter chains
    with the same matching rules"): for a connection with that value, only the list order
    would decide.  Identical matches are a special case; overlapping lists are the rest."""
    got = errors(listener(
        {"name": "a", "cluster": "c", "match": {"server_names": ["a.example", "b.example"]}},
        {"name": "b", "cluster": "c", "match": {"server_names": ["B.example"]}},
        {"name": "h", "cluster": "c", "match": {"transport": "tls", "alpn": ["h2", "http/1.1"]}},
        {"name": "h2", "cluster": "c", "match": {"transport": "tls", "alpn": ["h2"]}},
        {"name": "d", "cluster": "c", "match": {"destination": ["10.0.0.0/8", "10.1.0.0/16"]}},
        {"name": "d2", "cluster": "c", "match": {"destination": ["10.9.9.9/8"]}},
    ))
    assert got == [
        "listeners[0].filter_chains[1].match: overlaps filter_chains[0] (server name "
        "'b.example'): a connection matching both would be decided by list order",
        "listeners[0].filter_chains[3].match: overlaps filter_chains[2] (ALPN 'h2'): a "
        "connection matching both would be decided by list order",
        "listeners[0].filter_chains[5].match: overlaps filter_chains[4] (destination "
        "'10.0.0.0/8'): a connection matching both would be decided by list order",
    ]
    # Different values of one field, or a more specific value, are not an overlap.
    validate(listener(
        {"name": "a", "cluster": "c", "match": {"server_names": ["a.example"]}},
        {"name": "w", "cluster": "c", "match": {"server_names": ["*.example"]}},
        {"name": "h2", "cluster": "c", "match": {"transport": "tls", "alpn": ["h2"]}},
        {"name": "h1", "cluster": "c", "match": {"transport": "tls", "alpn": ["http/1.1"]}},
        {"name": "t", "cluster": "c", "match": {"transport": "tls"}},
        {"name": "d", "cluster": "c", "match": {"destination": ["10.0.0.0/8"]}},
        {"name": "d2", "cluster": "c", "match": {"destination": ["10.0.0.0/16"]}},
    ))
