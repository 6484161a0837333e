"""A listener and the DNS resolver serving more than one address (`additional_addresses`,
ADR 0088): `127.0.0.1` and `::1` on one port, as a transparent sidecar's are, over real
sockets on the loopback of the test's own namespace.

What must hold: both addresses answer on the same port; a snapshot swap hands each socket over
(never unbound: a client connecting throughout is never refused, nor cut off before its
answer); an address leaving the list closes only its socket; one arriving is bound; a snapshot
whose additional address cannot be bound is refused whole and the running one stays; the IPv6
socket takes IPv6 only, so an IPv4 wildcard on the same port still binds.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from tests.support.proxy import RunningProxy, free_port, running_proxy
from tests.support.rawhttp import RawClient
from tests.support.rawservers import (
    closed_by_peer,
    named_origin,
    raw_server,
    read_response_within,
)
from tests.support.recorder import recording_origin

from tulle.dataplane.server import ApplyError
from tulle.proxyconfig.validate import ConfigError, validate

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="this Python has no IPv6 sockets")


def config(origin: int, *, more: list[str] | None = None, protocol: str = "auto",
           port: int = 0, version: str = "v1") -> dict[str, Any]:
    return {
        "version": version,
        "listeners": [{"name": "out", "address": "127.0.0.1", "port": port,
                       "additional_addresses": ["::1"] if more is None else more,
                       "protocol": protocol, "route_table": "rt"}],
        "clusters": [{"name": "o", "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "o"}]}]}]}],
    }


def two(origin: int, port: int, first: tuple[str, list[str]], second: tuple[str, list[str]] | None,
        version: str) -> dict[str, Any]:
    """One or two listeners on `port`, each with a primary and additional addresses."""
    raw = config(origin, more=first[1], port=port, version=version)
    raw["listeners"][0]["address"] = first[0]
    if second is not None:
        raw["listeners"].append({**raw["listeners"][0], "name": "other", "address": second[0],
                                 "additional_addresses": second[1]})
    return raw


async def get(host: str, port: int) -> tuple[int, bytes]:
    client = await RawClient.connect(port, host=host)
    try:
        r = await client.request("GET", "/")
        return r.status, r.body
    finally:
        client.close()


async def refused(host: str, port: int) -> bool:
    try:
        _, w = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    w.close()
    return False


async def test_both_addresses_answer_on_one_port() -> None:
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(config(origin.port)) as p:
        port = p.port("out")
        assert await get("127.0.0.1", port) == (200, b"O")
        assert await get("::1", port) == (200, b"O")
        assert len(origin.requests) == 2


async def test_a_swap_hands_each_socket_over_and_no_client_is_refused() -> None:
    port = free_port()
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(config(origin.port, port=port)) as p:
        stop = asyncio.Event()
        outcomes: list[tuple[str, int]] = []

        async def hammer(host: str) -> None:
            while not stop.is_set():
                try:
                    outcomes.append((host, (await get(host, port))[0]))
                except ConnectionRefusedError:  # the port unbound, even for a moment
                    outcomes.append((host, -1))
                except (OSError, asyncio.IncompleteReadError):
                    # accepted by the retiring server just before the swap and closed by its
                    # drain before the request was read (the swap's drain grace prevents it)
                    outcomes.append((host, 0))

        tasks = [asyncio.create_task(hammer(h)) for h in ("127.0.0.1", "::1")]
        # http1 then auto: a new server (another driver) on duplicates of both sockets
        for i, proto in enumerate(["http1", "auto", "http1", "auto"]):
            await asyncio.sleep(0.05)
            await p.apply(config(origin.port, protocol=proto, port=port, version=f"v{i + 2}"))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        for host in ("127.0.0.1", "::1"):
            assert sum(1 for h, st in outcomes if h == host and st == 200) >= 10
        assert [o for o in outcomes if o[1] != 200] == []  # none refused, none cut off
        assert await get("::1", port) == (200, b"O")


async def test_an_address_leaving_closes_only_its_socket_and_one_arriving_is_bound() -> None:
    port = free_port()
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(config(origin.port, port=port)) as p:
        await p.apply(config(origin.port, more=[], port=port, version="v2"))
        assert await refused("::1", port)
        assert await get("127.0.0.1", port) == (200, b"O")
        await p.apply(config(origin.port, more=["::1"], port=port, version="v3"))
        assert await get("::1", port) == (200, b"O")
        assert await get("127.0.0.1", port) == (200, b"O")


async def test_an_additional_address_that_cannot_be_bound_refuses_the_snapshot() -> None:
    blocker = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    blocker.bind(("::1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    try:
        async with raw_server(named_origin(b"O")) as origin, \
                running_proxy(config(origin.port, more=[])) as p:
            before = p.port("out")
            with pytest.raises(ApplyError, match=rf"listener out: cannot bind \[::1\]:{taken}"):
                await p.apply(config(origin.port, port=taken, version="v2"))
            # nothing of the refused snapshot stays bound, and the running one still serves
            assert p.port("out") == before
            assert await get("127.0.0.1", before) == (200, b"O")
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", taken))  # the refused snapshot's IPv4 socket was closed
            probe.close()
    finally:
        blocker.close()


async def test_the_ipv6_socket_takes_ipv6_only() -> None:
    """With additional addresses, `::` does not also claim IPv4's port: an IPv4 wildcard
    elsewhere binds the same port."""
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(config(origin.port, more=["::"])) as p:
        port = p.port("out")
        assert await get("::1", port) == (200, b"O")
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            other.bind(("127.0.0.2", port))  # would be EADDRINUSE under a dual-stack `::`
        finally:
            other.close()


@pytest.mark.parametrize(("more", "where", "why"), [
    (["localhost"], "listeners[0].additional_addresses[0]", "must be an IP address"),
    (["127.0.0.1"], "listeners[0].additional_addresses[0]", "already an address"),
    (["::1", "::1"], "listeners[0].additional_addresses[1]", "already an address"),
    (["::1", "0:0::1"], "listeners[0].additional_addresses[1]", "already an address"),
    (["0.0.0.0"], "listeners[0].additional_addresses[0]", "overlaps"),
    (["::1%lo"], "listeners[0].additional_addresses[0]", "without a zone"),
    (["fe80::1%eth0"], "listeners[0].additional_addresses[0]", "without a zone"),
    (["::ffff:127.0.0.2"], "listeners[0].additional_addresses[0]", "IPv4-mapped"),
])
def test_bad_additional_addresses_are_refused_with_their_path(
        more: list[str], where: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(config(1, more=more, port=15999))
    assert any(e.path == where and why in e.message for e in err.value.errors), err.value.errors


@pytest.mark.parametrize(("first", "second", "error"), [
    (("127.0.0.1", ["::1"]), ("127.0.0.2", ["::1"]),
     "listeners[1].additional_addresses[0]: [::1]:15999 is already used by listeners[0]"),
    (("127.0.0.1", ["::1"]), ("0:0::1", []),
     "listeners[1].port: [0:0::1]:15999 is already used by listeners[0]"),
    (("127.0.0.1", ["::1"]), ("127.0.0.2", ["::"]),
     "listeners[1].additional_addresses[0]: [::]:15999 is already used by listeners[0]"),
    (("127.0.0.1", []), ("0.0.0.0", []),
     "listeners[1].port: 0.0.0.0:15999 is already used by listeners[0]"),
    (("127.0.0.1", []), ("::", []),  # `::` alone takes IPv4 too
     "listeners[1].port: [::]:15999 is already used by listeners[0]"),
])
def test_two_listeners_cannot_claim_one_address_and_port_however_written(
        first: tuple[str, list[str]], second: tuple[str, list[str]], error: str) -> None:
    """Refused at validation, with the field, not at bind time (ADR 0088)."""
    with pytest.raises(ConfigError) as err:
        validate(two(1, 15999, first, second, "v1"))
    assert [str(e) for e in err.value.errors] == [error]


def test_an_ipv6_wildcard_beside_other_addresses_leaves_ipv4_to_another_listener() -> None:
    validate(two(1, 15999, ("::", ["127.0.0.2"]), ("127.0.0.1", []), "v1"))


def dns_config(more: list[str], port: int = 0) -> dict[str, Any]:
    return {"node": {"namespace": "shop"},
            "dns": {"port": port, "additional_addresses": more, "upstreams": [],
                    "resolv_conf": "/nonexistent/resolv.conf",
                    "hosts": [{"service": "catalog", "namespace": "shop",
                               "addresses": ["10.96.0.7"]}]}}


async def ask(p: RunningProxy, host: str, *, tcp: bool = False) -> list[str]:
    q = dns.message.make_query("catalog.shop.svc.cluster.local", "A")
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    r = await send(q, host, port=p.server.dns.port, timeout=3)
    assert r.rcode() == dns.rcode.NOERROR
    return sorted(x.address for rrset in r.answer for x in rrset)


async def test_the_resolver_answers_on_both_addresses_over_udp_and_tcp() -> None:
    async with running_proxy(dns_config(["::1"])) as p:
        for host in ("127.0.0.1", "::1"):
            for tcp in (False, True):
                assert await ask(p, host, tcp=tcp) == ["10.96.0.7"]
        assert p.server.dns.addresses == ["127.0.0.1", "::1"]


async def test_the_resolver_keeps_its_sockets_and_follows_the_address_list() -> None:
    port = free_port()
    async with running_proxy(dns_config(["::1"], port=port)) as p:
        kept = p.server.dns.service.current.endpoints["127.0.0.1"]
        await p.apply(dns_config([], port=port))
        assert p.server.dns.service.current.endpoints["127.0.0.1"] is kept  # same port: kept
        assert p.server.dns.addresses == ["127.0.0.1"]
        with pytest.raises(OSError):
            await ask(p, "::1", tcp=True)  # its TCP socket closed: refused
        await p.apply(dns_config(["::1"], port=port))
        assert p.server.dns.service.current.endpoints["127.0.0.1"] is kept
        assert await ask(p, "::1") == ["10.96.0.7"]


@pytest.mark.parametrize(("before", "after"), [
    # the primary changes, the wildcard stays (a Workload's address edited: the inbound listener)
    (("127.0.0.1", ["::"]), ("127.0.0.2", ["::"])),
    # primary and additional trade places
    (("127.0.0.1", ["::1"]), ("::1", ["127.0.0.1"])),
    # the primary changes, the additional address stays
    (("127.0.0.1", ["::1"]), ("127.0.0.3", ["::1"])),
])
async def test_an_address_the_running_snapshot_holds_is_handed_over_whatever_else_changed(
        before: tuple[str, list[str]], after: tuple[str, list[str]]) -> None:
    """Each address already bound is handed over, not bound anew (which the running socket
    would refuse: the proxy would reject every later snapshot, new policies included)."""
    port = free_port()
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(two(origin.port, port, before, None, "v1")) as p:
        await p.apply(two(origin.port, port, after, None, "v2"))
        for host in ("127.0.0.1" if after[0] == "127.0.0.1" or "127.0.0.1" in after[1] else
                     after[0], "::1"):
            assert await get(host, port) == (200, b"O")
        await p.apply(two(origin.port, port, before, None, "v3"))  # and back
        assert await get("::1", port) == (200, b"O")


async def test_an_additional_address_moves_to_another_listener() -> None:
    port = free_port()
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(two(origin.port, port, ("127.0.0.1", ["::1"]), ("127.0.0.2", []),
                              "v1")) as p:
        await p.apply(two(origin.port, port, ("127.0.0.1", []), ("127.0.0.2", ["::1"]), "v2"))
        assert await get("::1", port) == (200, b"O")
        assert p.server.listeners["other"].servers  # it is the other listener's now
        assert len(p.server.listeners["other"].servers) == 2
        assert len(p.server.listeners["out"].servers) == 1


async def test_a_wildcard_that_would_change_taking_ipv4_is_refused_not_changed_silently() -> None:
    """`::` alone takes IPv4 too (the system's default); beside other addresses it takes IPv6
    only.  A bound socket cannot change that, so the snapshot is refused with the way out."""
    port = free_port()
    async with raw_server(named_origin(b"O")) as origin, \
            running_proxy(two(origin.port, port, ("::", []), None, "v1")) as p:
        assert await get("127.0.0.1", port) == (200, b"O")  # dual-stack: IPv4 too
        with pytest.raises(ApplyError, match=r"bound taking IPv4 as well or not"):
            await p.apply(two(origin.port, port, ("::", ["127.0.0.2"]), None, "v2"))
        assert await get("127.0.0.1", port) == (200, b"O")  # the running one still serves


def test_the_resolvers_additional_addresses_are_checked_alike() -> None:
    with pytest.raises(ConfigError) as err:
        validate(dns_config(["0:0::1", "::1", "::ffff:127.0.0.1"]))
    assert [(e.path, e.message.split(" (")[0]) for e in err.value.errors] == [
        ("dns.additional_addresses[1]", "::1 is already an address of this socket's owner"),
        ("dns.additional_addresses[2]",
         "::ffff:127.0.0.1 is an IPv4-mapped address: give the IPv4 address itself")]


async def test_the_resolver_keeps_a_socket_whose_address_is_respelled() -> None:
    port = free_port()
    async with running_proxy(dns_config(["::1"], port=port)) as p:
        kept = p.server.dns.service.current.endpoints["::1"]
        await p.apply(dns_config(["0:0::1"], port=port))  # the same address, written otherwise
        assert p.server.dns.service.current.endpoints["0:0::1"] is kept
        assert await ask(p, "::1") == ["10.96.0.7"]


def test_the_resolver_may_not_share_an_address_and_port_with_a_listener() -> None:
    raw = {**config(1, port=15998), **dns_config(["0:0::1"], port=15998)}
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert [str(e) for e in err.value.errors] == [
        "dns.port: 127.0.0.1:15998 is also listener listeners[0] (out)"]
    raw["dns"]["address"] = "127.0.0.2"
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert [str(e) for e in err.value.errors] == [
        "dns.port: [0:0::1]:15998 is also listener listeners[0] (out)"]


def test_reuse_port_shares_an_address_only_when_both_listeners_say_so() -> None:
    raw = two(1, 15999, ("127.0.0.1", []), ("127.0.0.1", []), "v1")
    raw["listeners"][1]["reuse_port"] = True
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert [str(e) for e in err.value.errors] == [
        "listeners[1].port: 127.0.0.1:15999 is already used by listeners[0]"]
    raw["listeners"][0]["reuse_port"] = True
    validate(raw)


async def test_a_socket_a_kept_listener_serves_is_never_handed_to_another() -> None:
    """Two `reuse_port` listeners on one address: the second, added later, binds a socket of
    its own; it is not handed the first one's (which would leave one socket for both, the
    first listener's configuration served by nobody)."""
    port = free_port()
    first = two(1, port, ("127.0.0.1", []), None, "v1")
    first["listeners"][0]["reuse_port"] = True
    both = two(1, port, ("127.0.0.1", []), ("127.0.0.1", []), "v2")
    for lst in both["listeners"]:
        lst["reuse_port"] = True
    async with running_proxy(first) as p:
        out_fd = p.server.listeners["out"].servers[0].sockets[0].fileno()
        await p.apply(both)
        assert p.server.listeners["out"].servers[0].sockets[0].fileno() == out_fd  # kept
        inode = {name: os.fstat(h.servers[0].sockets[0].fileno()).st_ino
                 for name, h in p.server.listeners.items()}
        assert inode["out"] != inode["other"], inode


HOSTILE = {  # request smuggling and malformed heads, as test_hostile_http1.py sends them
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                    b"Content-Length: 4\r\n\r\nabcd",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
}


@pytest.mark.parametrize("protocol", ["auto", "http1"])
async def test_the_ipv6_socket_refuses_what_the_ipv4_one_does_and_forwards_none_of_it(
        protocol: str) -> None:
    """An added address is the same listener, not a second way in: each hostile request on
    `[::1]` gets 400 and a close, the upstream (a raw peer recording every byte) receives
    nothing of it, and the listener then serves a good request on both addresses."""
    async with recording_origin() as origin, \
            running_proxy(config(origin.port, protocol=protocol)) as p:
        port = p.port("out")
        for name, wire in HOSTILE.items():
            r, w = await asyncio.open_connection("::1", port)
            w.write(wire)
            resp = await read_response_within(r)
            assert (name, resp.status, await closed_by_peer(r)) == (name, 400, True)
            w.close()
        assert [bytes(b) for b in origin.raw] == []  # not one byte went upstream
        assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == len(
            HOSTILE)
        assert (await get("::1", port))[0] == 200
        assert (await get("127.0.0.1", port))[0] == 200
        assert len(origin.requests) == 2


async def test_the_resolvers_ipv6_wildcard_takes_ipv6_only_beside_others_as_a_listeners_does(
        ) -> None:
    """Alone, `::` keeps the system's dual-stack default (as before ADR 0088) and answers
    IPv4 too; beside other addresses each socket serves its own family.  (The kernel makes a
    socket on a specific IPv6 address IPv6-only by itself: only the wildcard is in question.)"""
    def v6only(p: RunningProxy, address: str) -> list[int]:
        udp, tcp = p.server.dns.service.current.endpoints[address]
        socks = [udp.get_extra_info("socket"), *tcp.sockets]
        return [s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for s in socks]

    async with running_proxy(dns_config(["::"])) as p:
        assert v6only(p, "::") == [1, 1]
        assert await ask(p, "127.0.0.1") == ["10.96.0.7"]  # the IPv4 socket's, beside it
    alone = dns_config([])
    alone["dns"]["address"] = "::"
    async with running_proxy(alone) as p:
        assert v6only(p, "::") == [0, 0]
        assert await ask(p, "127.0.0.1") == ["10.96.0.7"]  # IPv4, on the one `::` socket
