"""The proxy's mesh DNS resolver over real UDP and TCP on 127.0.0.1, queried with dnspython;
non-mesh names forwarded to a real upstream on loopback that records what it received."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
from tests.support.dnsupstream import upstream_dns
from tests.support.proxy import RunningProxy, running_proxy

HOSTS = [{"service": "catalog", "namespace": "shop", "addresses": ["10.96.0.7"]},
         {"service": "web", "namespace": "default", "addresses": ["10.96.0.9", "fd00::9"]},
         {"service": "v6only", "namespace": "default", "addresses": ["fd00::10"]}]


def config(upstream_port: int | None = None, **dns_extra: Any) -> dict[str, Any]:
    # 2 s upstream: a stall of the shared test machine must not turn a forward into SERVFAIL
    # (a CI run lost a TCP forward to 300 ms); tests of the timeout set their own.
    d: dict[str, Any] = {"port": 0, "hosts": HOSTS, "upstream_timeout_ms": 2000, **dns_extra}
    if upstream_port is not None:
        d["upstreams"] = [f"127.0.0.1:{upstream_port}"]
    else:
        d.setdefault("upstreams", [])
        d.setdefault("resolv_conf", "/nonexistent/resolv.conf")
    return {"node": {"namespace": "default"}, "dns": d}


async def udp(p: RunningProxy, name: str, rtype: str = "A", **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=p.server.dns.port, timeout=3)


async def tcp(p: RunningProxy, name: str, rtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rtype)
    return await dns.asyncquery.tcp(q, "127.0.0.1", port=p.server.dns.port, timeout=3)


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(x.address for rrset in r.answer for x in rrset)


@pytest.mark.parametrize("name", [
    "catalog.shop.svc.cluster.local", "catalog.shop", "catalog.shop.mesh",
    "CATALOG.Shop.SVC.cluster.LOCAL", "catalog.shop.svc.cluster.local."])
async def test_every_form_of_a_service_name_resolves_to_its_vip(name: str) -> None:
    async with running_proxy(config()) as p:
        for r in (await udp(p, name), await tcp(p, name)):
            assert r.rcode() == dns.rcode.NOERROR and addresses(r) == ["10.96.0.7"]
            assert r.flags & dns.flags.AA and r.answer[0].ttl == 5
        assert p.metric("tulle_proxy_dns_queries_total", result="mesh") == 2


async def test_the_bare_name_resolves_only_in_the_pods_own_namespace() -> None:
    async with running_proxy(config()) as p:
        assert addresses(await udp(p, "web")) == ["10.96.0.9"]
        assert addresses(await udp(p, "web", "AAAA")) == ["fd00::9"]
        r = await udp(p, "catalog")  # another namespace: not a mesh name, forwarded
        assert r.rcode() == dns.rcode.SERVFAIL  # (no upstream configured here)


async def test_the_other_family_and_other_types_are_nodata_never_nxdomain() -> None:
    async with running_proxy(config()) as p:
        for name, rtype in (("v6only.default", "A"), ("catalog.shop", "AAAA"),
                            ("catalog.shop", "MX"), ("catalog.shop", "TXT")):
            r = await udp(p, name, rtype)
            assert r.rcode() == dns.rcode.NOERROR and not r.answer, (name, rtype)


async def test_unknown_names_under_the_mesh_domain_are_nxdomain() -> None:
    async with running_proxy(config()) as p:
        r = await udp(p, "nothing.shop.mesh")
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert p.metric("tulle_proxy_dns_queries_total", result="nxdomain") == 1


async def test_the_parents_of_service_names_are_nodata_over_udp_and_tcp() -> None:
    """Empty non-terminals (ADR 0095): they exist, so NOERROR with no records."""
    async with running_proxy(config()) as p:
        for name in ("shop.mesh", "mesh", "shop.svc.cluster.local", "svc.cluster.local"):
            for r in (await udp(p, name), await tcp(p, name, "AAAA")):
                assert r.rcode() == dns.rcode.NOERROR and not r.answer, name
        assert p.metric("tulle_proxy_dns_queries_total", result="mesh") == 8
        assert p.metric("tulle_proxy_dns_queries_total", result="nxdomain") == 0


async def test_other_names_are_forwarded_and_relayed_unchanged_over_udp_and_tcp() -> None:
    async with upstream_dns() as up, running_proxy(config(up.port)) as p:
        q = dns.message.make_query("example.org", "A", use_edns=0)
        q.flags |= dns.flags.CD
        sent = q.to_wire()
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=p.server.dns.port, timeout=3)
        assert up.received_udp == [sent]  # the client's bytes, untouched
        direct = up.reply(sent, tcp=False)
        assert r.to_wire() == direct  # the upstream's answer, byte for byte (ID, flags: RA AD)
        assert r.flags & dns.flags.AD and addresses(r) == ["192.0.2.7"]
        r = await tcp(p, "example.org")
        assert len(up.received_tcp) == 1 and addresses(r) == ["192.0.2.7"]
        r = await udp(p, "no.such.example.org")
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert p.metric("tulle_proxy_dns_queries_total", result="forwarded") == 3


async def test_truncation_is_passed_on_and_tcp_carries_the_big_answer() -> None:
    async with upstream_dns() as up, running_proxy(config(up.port)) as p:
        r = await udp(p, "big.example.org")
        assert r.flags & dns.flags.TC and not r.answer
        r = await tcp(p, "big.example.org")
        assert len(addresses(r)) == 40


async def test_an_upstream_that_does_not_answer_gets_the_client_servfail() -> None:
    async with upstream_dns() as up, running_proxy(config(up.port, upstream_timeout_ms=300)) as p:
        for r in (await udp(p, "slow.example.org"), await tcp(p, "slow.example.org")):
            assert r.rcode() == dns.rcode.SERVFAIL
            assert r.question[0].name.to_text() == "slow.example.org."
        assert p.metric("tulle_proxy_dns_queries_total", result="servfail") == 2


async def test_a_spoofed_answer_with_another_id_is_skipped() -> None:
    async with upstream_dns(wrong_id_first=True) as up, running_proxy(config(up.port)) as p:
        r = await udp(p, "example.org")
        assert addresses(r) == ["192.0.2.7"]


async def test_upstreams_come_from_resolv_conf_when_the_contract_names_none(tmp_path: Any) -> None:
    async with upstream_dns() as up:
        conf = tmp_path / "resolv.conf"
        conf.write_text(f"search x\nnameserver bogus\nnameserver 127.0.0.1:{up.port}\n")
        async with running_proxy(config(resolv_conf=str(conf))) as p:
            assert addresses(await udp(p, "example.org")) == ["192.0.2.7"]


async def test_a_new_snapshot_changes_answers_on_the_same_port() -> None:
    async with running_proxy(config()) as p:
        port = p.server.dns.port
        raw = config()
        raw["dns"]["hosts"] = [{"service": "catalog", "namespace": "shop",
                                "addresses": ["10.96.0.70"]}]
        await p.apply(raw)
        assert p.server.dns.port == port
        assert addresses(await udp(p, "catalog.shop")) == ["10.96.0.70"]
        del raw["dns"]
        await p.apply(raw)
        assert p.server.dns.port == 0


# -- attacks: the resolver answers FORMERR or drops, and keeps answering ----------------------

def _raw_udp(port: int, payload: bytes, expect_reply: bool) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3 if not expect_reply else 3)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


HDR = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)


@pytest.mark.parametrize(("payload", "answered"), [
    (b"\x01\x02", False),                                   # truncated header: dropped
    (HDR, True),                                            # header, no question
    (HDR + b"\x3fabc", True),                               # label longer than the message
    (HDR + b"\xc0\x0c\x00\x01\x00\x01", True),              # pointer to itself
    (HDR + b"\x01a\xc0\x0c\x00\x01\x00\x01", True),         # pointer loop through a label
    (HDR + b"\x80xx\x00\x00\x01\x00\x01", True),            # bad label type
    (struct.pack("!HHHHHH", 0xBEEF, 0x8100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", False),
])
async def test_hostile_datagrams_are_formerr_or_dropped_and_the_listener_keeps_answering(
        payload: bytes, answered: bool) -> None:
    async with running_proxy(config()) as p:
        port = p.server.dns.port
        reply = await asyncio.to_thread(_raw_udp, port, payload, answered)
        if answered:
            assert reply is not None
            r = dns.message.from_wire(reply)
            assert r.id == 0xBEEF and r.rcode() == dns.rcode.FORMERR
        else:
            assert reply is None
            assert p.metric("tulle_proxy_dns_queries_total", result="dropped") == 1
        assert addresses(await udp(p, "catalog.shop")) == ["10.96.0.7"]


async def test_a_huge_tcp_length_prefix_closes_the_connection() -> None:
    async with running_proxy(config()) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.server.dns.port)
        writer.write(b"\xff\xff" + b"x" * 100)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, nothing answered
        writer.close()
        assert p.metric("tulle_proxy_dns_queries_total", protocol="tcp", result="dropped") == 1
        assert addresses(await tcp(p, "catalog.shop")) == ["10.96.0.7"]


async def test_tcp_connections_past_the_cap_are_closed_at_once() -> None:
    async with running_proxy(config(max_tcp_connections=2)) as p:
        port = p.server.dns.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            w3.write(b"\x00")
            assert await asyncio.wait_for(r3.read(), 3) == b""
            raise ConnectionResetError
        for _, w in held:
            w.close()
        w3.close()


async def test_a_udp_forward_flood_is_bounded_and_counted() -> None:
    """More queries than `max_inflight` to an upstream that never answers: the excess is
    dropped at once (counted), memory stays bounded, mesh names still resolve."""
    async with upstream_dns() as up, running_proxy(config(up.port, max_inflight=8)) as p:
        port = p.server.dns.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(200):
                q = dns.message.make_query("slow.example.org", "A")
                q.id = i
                s.sendto(q.to_wire(), ("127.0.0.1", port))
        for _ in range(200):  # bounded wait for the proxy to read them all
            done = (p.metric("tulle_proxy_dns_queries_total", result="dropped")
                    + len(up.received_udp))
            if done >= 200:
                break
            await asyncio.sleep(0.01)
        service = p.server.dns.service
        assert service is not None and service.current.shared is not None
        assert service.current.shared.inflight <= 8
        assert p.metric("tulle_proxy_dns_queries_total", result="dropped") >= 150
        assert addresses(await udp(p, "catalog.shop")) == ["10.96.0.7"]


async def test_an_idle_tcp_client_is_closed() -> None:
    async with running_proxy(config(tcp_idle_timeout_ms=50)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.server.dns.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()


async def test_tcp_forwards_past_the_in_flight_bound_get_servfail_at_once() -> None:
    async with upstream_dns() as up, running_proxy(config(up.port, max_inflight=1,
                                                          upstream_timeout_ms=5000)) as p:
        port = p.server.dns.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(2):  # the first waits on the silent upstream, the second is over
            q = dns.message.make_query("slow.example.org", "A")
            q.id = i
            wire = q.to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
        n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
        r = dns.message.from_wire(await reader.readexactly(n))
        assert r.id == 1 and r.rcode() == dns.rcode.SERVFAIL
        writer.close()


async def test_queries_held_past_a_connections_16_pending_forwards_are_answered_later() -> None:
    """One write of 40 queries: 20 the upstream never answers, then 20 it answers.  At most
    16 forwards are pending at a time (ADR 0095); the rest wait in the connection's buffer
    and are taken as forwards end (SERVFAIL after the timeout), so every query is answered,
    in at most three rounds of the timeout."""
    async with upstream_dns() as up, running_proxy(config(up.port, upstream_timeout_ms=200)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.server.dns.port)
        burst = b""
        for i in range(40):
            q = dns.message.make_query("slow.example.org" if i < 20 else "example.org", "A")
            q.id = i
            w = q.to_wire()
            burst += len(w).to_bytes(2, "big") + w
        writer.write(burst)
        service = p.server.dns.service
        assert service is not None and service.current.shared is not None
        shared = service.current.shared
        got: dict[int, int] = {}
        async with asyncio.timeout(5):
            while len(got) < 40:
                n = int.from_bytes(await reader.readexactly(2), "big")
                r = dns.message.from_wire(await reader.readexactly(n))
                got[r.id] = r.rcode()
                assert shared.inflight <= 16
        writer.close()
        assert all(got[i] == dns.rcode.SERVFAIL for i in range(20))
        assert all(got[i] == dns.rcode.NOERROR for i in range(20, 40))
        assert len(up.received_tcp) == 40


async def test_a_taken_port_refuses_the_snapshot_and_keeps_the_running_one() -> None:
    from tulle.dataplane.server import ApplyError
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    taken = blocker.getsockname()[1]
    try:
        async with running_proxy(config()) as p:
            port = p.server.dns.port
            raw = config()
            raw["dns"]["port"] = taken
            raw["dns"]["hosts"] = []
            with pytest.raises(ApplyError, match=f"dns 127.0.0.1:{taken}: cannot bind"):
                await p.apply(raw)
            assert p.server.dns.port == port
            assert addresses(await udp(p, "catalog.shop")) == ["10.96.0.7"]
    finally:
        blocker.close()


async def test_a_tcp_client_that_never_reads_its_answers_stops_being_read() -> None:
    """Pipelined queries whose answers the client never reads: the proxy stops reading once
    its write buffer is full, so the client's sends block long before 64 MB (otherwise the
    proxy would buffer every answer)."""
    async with running_proxy(config()) as p:
        q = dns.message.make_query("catalog.shop", "A").to_wire()
        frame = (len(q).to_bytes(2, "big") + q) * 1000
        with socket.create_connection(("127.0.0.1", p.server.dns.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            sent = 0
            stalled = 0
            while sent < 64 * 1024 * 1024 and stalled < 50:  # bounded both ways
                try:
                    sent += s.send(frame)
                    stalled = 0
                except BlockingIOError:
                    stalled += 1
                    await asyncio.sleep(0.01)  # let the proxy run (it shares this loop)
            assert stalled >= 50 and sent < 64 * 1024 * 1024
        assert addresses(await udp(p, "catalog.shop")) == ["10.96.0.7"]


async def test_an_upstream_that_is_the_resolver_itself_is_skipped() -> None:
    from tests.support.proxy import free_port
    port = free_port()
    raw = config(port=port, upstreams=[f"127.0.0.1:{port}"])
    async with running_proxy(raw) as p:
        r = await udp(p, "example.org")
        assert r.rcode() == dns.rcode.SERVFAIL
        assert p.metric("tulle_proxy_dns_queries_total", result="servfail") == 1


async def test_a_clients_bare_names_resolve_in_its_own_namespace_over_udp_and_tcp() -> None:
    """`dns.clients` (a node agent's pods, ADR 0050): the query's source address picks the
    namespace of bare names; every other source keeps `node.namespace`."""
    clients = [{"address": "127.0.0.2", "namespace": "shop"}]
    async with running_proxy(config(clients=clients)) as p:
        port = p.server.dns.port
        for ask in (dns.asyncquery.udp, dns.asyncquery.tcp):
            from_pod = await ask(dns.message.make_query("catalog", "A"), "127.0.0.1",
                                 port=port, timeout=3, source="127.0.0.2")
            assert addresses(from_pod) == ["10.96.0.7"], ask
            r = await ask(dns.message.make_query("web", "A"), "127.0.0.1", port=port,
                          timeout=3, source="127.0.0.2")
            assert r.rcode() == dns.rcode.SERVFAIL  # `default`'s web is not the pod's bare name
            # The fully qualified form answers every client alike.
            r = await ask(dns.message.make_query("web.default", "A"), "127.0.0.1", port=port,
                          timeout=3, source="127.0.0.2")
            assert addresses(r) == ["10.96.0.9"]
        assert addresses(await udp(p, "web")) == ["10.96.0.9"]  # from 127.0.0.1: node's
        assert (await udp(p, "catalog")).rcode() == dns.rcode.SERVFAIL


def test_dns_clients_are_checked() -> None:
    from tulle.proxyconfig import ConfigError, validate

    for clients, path in (([{"address": "pod-a", "namespace": "shop"}], "dns.clients[0].address"),
                          ([{"address": "10.0.0.1", "namespace": "a"},
                            {"address": "10.0.0.1", "namespace": "b"}], "dns.clients[1].address")):
        with pytest.raises(ConfigError) as exc:
            validate(config(clients=clients))
        assert path in str(exc.value)


async def test_a_proxy_without_a_dns_section_loads_no_resolver_until_one_comes() -> None:
    """ADR 0068: the resolver's modules and metric family arrive with the first `dns` section."""
    cfg = config()
    no_dns = {k: v for k, v in cfg.items() if k != "dns"}
    async with running_proxy(no_dns) as p:
        assert p.server.dns.service is None and p.server.dns.port == 0
        assert "tulle_proxy_dns_queries_total" not in p.server.metrics.registry.render()
        await p.apply(cfg)
        assert p.server.dns.service is not None and p.server.dns.port > 0
        assert addresses(await udp(p, "catalog.shop")) == ["10.96.0.7"]
        await p.apply(no_dns)
        assert p.server.dns.port == 0


async def test_a_client_on_a_dual_stack_socket_is_known_by_its_ipv4_address() -> None:
    """A resolver on `::` alone takes IPv4 too, and the socket reports an IPv4 client as
    `::ffff:127.0.0.2`: it still gets its namespace's bare names, also when its address is
    written in the mapped form.  (Keyed by the text alone, both got the node's names.)"""
    clients = [{"address": "127.0.0.2", "namespace": "shop"},
               {"address": "::ffff:127.0.0.3", "namespace": "shop"}]
    async with running_proxy(config(address="::", clients=clients)) as p:
        port = p.server.dns.port
        for source in ("127.0.0.2", "127.0.0.3"):
            for ask in (dns.asyncquery.udp, dns.asyncquery.tcp):
                r = await ask(dns.message.make_query("catalog", "A"), "127.0.0.1", port=port,
                              timeout=3, source=source)
                assert addresses(r) == ["10.96.0.7"], (source, ask)
        assert addresses(await udp(p, "web")) == ["10.96.0.9"]  # from 127.0.0.1: node's
