"""An attacker's audit of the L4 paths: protocol detection on transparent listeners, filter
chains, and the mesh DNS resolver.  Real proxies on loopback, raw peers that record the exact
bytes they receive.  Each test here failed on the code it was written against (the defect it
names); see the audit report for the cause.

Only the kernel's SO_ORIGINAL_DST answer is stood in for (as in
test_filter_chains_transparent.py and test_mtls_attacks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.rcode
import pytest
from tests.support.dnsupstream import upstream_dns
from tests.support.proxy import running_proxy

from tulle.dataplane.listeners import detect

# -- Transparent inbound: an `auto` port guarded by authorization -----------------------------

DENY_ALL = {"type": "Authorization", "policies": [
    {"name": "shop/deny-all", "action": "ALLOW", "rules": []}]}
SECRET = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecret"


@dataclass
class RecordingApp:
    """The application behind the sidecar: records every byte each connection sent it and
    answers any request head with a 200 whose body is `secret`."""

    port: int = 0
    received: list[bytearray] = field(default_factory=list)
    """Per connection, the bytes it sent so far (recorded as they arrive)."""


@contextlib.asynccontextmanager
async def recording_app() -> AsyncIterator[RecordingApp]:
    app = RecordingApp()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = bytearray()
        app.received.append(data)
        try:
            while True:
                chunk = await asyncio.wait_for(r.read(65536), 5)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    w.write(SECRET)
                    await w.drain()
                    break
        except (TimeoutError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    app.port = server.sockets[0].getsockname()[1]
    try:
        yield app
    finally:
        server.close()


def inbound_config(app: int, form: str) -> dict[str, Any]:
    """A transparent inbound listener as the compiler renders an `auto` workload port with
    an AuthorizationPolicy (controlplane/compiler/proxies.py `inbound` + transparent.py
    `inbound_listener`): a chain by destination port, protocol `auto`, the port's route table
    (its Authorization filter first) and deliberately *no cluster* -- "an `auto` port takes
    only HTTP (no `cluster` for opaque TCP, which could not be authorized per request)".
    `form`: that chain (`chains`), or the same as a `destinations` rule."""
    listener: dict[str, Any] = {
        "name": "inbound", "port": 0, "direction": "inbound", "mode": "transparent",
        "protocol": "auto", "detect_timeout_ms": 200}
    if form == "chains":
        listener["filter_chains"] = [{"name": str(app), "match": {"destination_port": app},
                                      "protocol": "auto", "route_table": "inbound"}]
    else:
        listener["destinations"] = [{"address": "127.0.0.1", "port": app, "protocol": "auto",
                                     "route_table": "inbound"}]
    return {
        "listeners": [listener],
        "route_tables": [{"name": "inbound", "virtual_hosts": [{"name": "inbound",
            "domains": ["*"], "rules": [{"backends": [{"cluster": "app"}],
                                         "filters": [DENY_ALL]}]}]}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app}]}],
    }


def client_hello() -> bytes:
    """A real TLS 1.3 ClientHello (Python's ssl, memory BIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="app.shop")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


REQUEST = b"GET /admin HTTP/1.1\r\nhost: app\r\n\r\n"


@pytest.mark.parametrize("form", ["chains", "destinations"])
@pytest.mark.parametrize("attack", ["silent_then_request", "leading_space", "tls_client_hello"])
async def test_a_guarded_auto_port_never_relays_raw_bytes_to_the_application(
        form: str, attack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEFECT: on a transparent listener a chain (or destination rule) that routes HTTP and
    names no cluster relays whatever is not HTTP -- a client silent past the detect timeout,
    a request-line with a leading space (`undecided` / "clearly not HTTP"), a TLS
    ClientHello -- to the *original destination*, i.e. straight to the application port,
    past the route's Authorization filter.  A plain `GET /admin` gets 403; the same request
    sent after 200 ms of silence, or with one leading space (which Python's http.server,
    among others, accepts), reaches the application and returns its 200.

    Expected: nothing reaches the application except through the HTTP driver and its
    filters (ADR 0044: "nothing reaches the application around the proxy's policies"); the
    connection is refused (`no_cluster`) or answered by the HTTP stack."""
    async with recording_app() as app:
        monkeypatch.setattr(detect, "original_destination", lambda sock: ("127.0.0.1", app.port))
        async with running_proxy(inbound_config(app.port, form)) as p:
            port = p.port("inbound")
            # The control: a plain request is refused by the route's authorization.
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(REQUEST)
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(b"HTTP/1.1 403")
            w.close()

            r, w = await asyncio.open_connection("127.0.0.1", port)
            if attack == "silent_then_request":
                await asyncio.sleep(0.5)  # past detect_timeout_ms
                with contextlib.suppress(ConnectionError):
                    w.write(REQUEST)
            elif attack == "leading_space":
                w.write(b" " + REQUEST)
            else:
                w.write(client_hello())
            try:
                got = await asyncio.wait_for(r.read(), 2)
            except (ConnectionError, TimeoutError):
                got = b""  # (a relayed ClientHello waits on the application: no answer)
            await asyncio.sleep(0.2)  # let the app record what it got
            w.close()
            assert b"secret" not in got
            assert not any(app.received), \
                f"the application received {[bytes(x[:48]) for x in app.received]!r}"


# -- Mesh DNS -----------------------------------------------------------------------------------

HOSTS = [{"service": "catalog", "namespace": "shop", "addresses": ["10.96.0.7"]}]


def dns_config(upstream_port: int | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"port": 0, "hosts": HOSTS, "upstream_timeout_ms": 3000, **extra}
    if upstream_port is not None:
        d["upstreams"] = [f"127.0.0.1:{upstream_port}"]
    else:
        d["upstreams"] = []
        d["resolv_conf"] = "/nonexistent/resolv.conf"
    return {"node": {"namespace": "default"}, "dns": d}


def _udp_exchange(port: int, payload: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


async def udp_raw(port: int, payload: bytes) -> bytes | None:
    return await asyncio.to_thread(_udp_exchange, port, payload)


def frame(q: dns.message.Message) -> bytes:
    w = q.to_wire()
    return len(w).to_bytes(2, "big") + w


async def test_one_tcp_connection_cannot_take_more_than_its_16_pending_forwards() -> None:
    """DEFECT: ADR 0042 bounds a TCP client to 16 forwards pending ("one connection may have
    16 forwards pending before reading pauses").  `_Tcp.data_received` pauses reading at 16
    but goes on taking every query already in its buffer: 100 pipelined queries in one write
    start 100 forwards, so one connection takes the whole `max_inflight` (here 32) and other
    clients' forwarded queries are dropped (UDP) or SERVFAIL'd (TCP) until its forwards time
    out.  Expected: at most 16 of its queries reach the upstream while they are pending, and
    another client's forwarded query is still forwarded."""
    async with upstream_dns() as up, running_proxy(dns_config(up.port, max_inflight=32)) as p:
        port = p.server.dns.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        burst = b""
        for i in range(100):
            q = dns.message.make_query("slow.example.org", "A")  # never answered upstream
            q.id = i
            burst += frame(q)
        writer.write(burst)
        await writer.drain()
        async with asyncio.timeout(5):
            while len(up.received_tcp) < 16:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        pending_from_one = len(up.received_tcp)
        other = dns.message.make_query("example.org", "A")
        reply = await udp_raw(port, other.to_wire())
        writer.close()
        assert pending_from_one <= 16, f"one connection has {pending_from_one} forwards pending"
        assert reply is not None, "another client's forwarded query was dropped"
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.NOERROR and r.answer


@pytest.mark.parametrize("name", ["shop.mesh", "mesh"])
async def test_an_empty_non_terminal_of_the_mesh_domain_is_nodata_not_nxdomain(name: str) -> None:
    """DEFECT: `catalog.shop.mesh` exists, yet `shop.mesh` (and the apex `mesh`) answer
    NXDOMAIN.  NXDOMAIN says no name exists at or *below* it (RFC 8020 section 2; RFC 1034
    4.3.2 / RFC 4592 2.2.2 on empty non-terminals): a resolver that applies RFC 8020
    (Unbound's harden-below-nxdomain, on by default for validated answers) may then deny
    `catalog.shop.mesh` itself.  Expected: NOERROR with no records (NODATA)."""
    async with running_proxy(dns_config()) as p:
        port = p.server.dns.port
        reply = await udp_raw(port, dns.message.make_query(name, "A").to_wire())
        assert reply is not None
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        # the name below it does exist
        reply = await udp_raw(port, dns.message.make_query("catalog.shop.mesh", "A").to_wire())
        assert reply is not None and dns.message.from_wire(reply).answer


async def test_an_edns_version_it_does_not_implement_is_answered_badvers() -> None:
    """DEFECT: a query with an OPT record of EDNS VERSION 1 gets an ordinary NOERROR answer
    with the records.  RFC 6891 section 6.1.3: "If a responder does not implement the
    VERSION level of the request, then it MUST respond with RCODE=BADVERS" (extended RCODE
    16, carried in the OPT record, with VERSION 0)."""
    async with running_proxy(dns_config()) as p:
        q = dns.message.make_query("catalog.shop.mesh", "A", use_edns=1)
        reply = await udp_raw(p.server.dns.port, q.to_wire())
        assert reply is not None
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.BADVERS
        assert not r.answer
        assert r.edns == 0


@pytest.mark.parametrize("label", [b"catalog.shop", b"catalog.shop.mesh"])
async def test_a_label_holding_a_dot_is_not_the_name_its_dots_spell(label: bytes) -> None:
    """DEFECT: the codec joins labels with b"." before the table lookup, so the *one*-label
    name `catalog\\.shop` (a label of 12 octets holding a dot, which RFC 1035 3.1 / RFC 2181
    11 allow) is taken for the two-label `catalog.shop` and answered with that Service's VIP
    (and `catalog\\.shop\\.mesh`, one label at the root, is answered as a mesh name).  The
    client asked for another name.  Expected: it is not a mesh name (forwarded upstream,
    never given the VIP)."""
    async with upstream_dns() as up, running_proxy(dns_config(up.port)) as p:
        head = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        query = head + bytes((len(label),)) + label + b"\x00" + b"\x00\x01\x00\x01"
        reply = await udp_raw(p.server.dns.port, query)
        assert reply is not None
        r = dns.message.from_wire(reply)
        assert not any(x.address == "10.96.0.7" for rrset in r.answer for x in rrset)
        assert up.received_udp == [query]  # forwarded as it came


# -- Filter-chain listeners: sniffing a trickled prefix -----------------------------------------


async def test_a_trickled_prefix_on_a_filter_chain_listener_is_scanned_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DEFECT: `ChainAccept._sniff` calls `detect(buffer)` on the *whole* buffer at every
    segment, and `data_received` copies the buffer (`self.buffer + data`) each time: a client
    trickling a method token one byte per segment costs the proxy work quadratic in the
    prefix (up to `MAX_SNIFF_BYTES`).  ADR 0073 / `protocols.detect.detect_next` fixed exactly
    this for `auto` listeners ("a token trickled up to MAX_SNIFF_BYTES cost the proxy a
    quarter of a second of CPU per connection"), but a listener with filter chains (every
    compiled transparent inbound listener, every PERMISSIVE mTLS port) still rescans.
    Measured through a separate proxy process: four clients trickling 16,400 bytes each cost
    2.48 s of proxy CPU on a chain listener against 1.31 s on an `auto` listener.
    Expected: bytes examined by the sniffer linear in the bytes received."""
    from tulle.dataplane.listeners import chain_accept
    from tulle.dataplane.protocols import detect as sniff

    scanned = 0
    real = sniff.detect

    def counting(data: bytes) -> sniff.Detection:
        nonlocal scanned
        scanned += len(data)
        return real(data)

    real_next = sniff.detect_next

    def counting_next(data: bytes, before: int) -> sniff.Detection:
        nonlocal scanned
        scanned += len(data) - before
        return real_next(data, before)

    # Whichever of the two a fix uses: `detect` anywhere, `detect_next` from chain_accept.
    monkeypatch.setattr(sniff, "detect", counting)
    monkeypatch.setattr(chain_accept, "detect", counting, raising=False)
    monkeypatch.setattr(chain_accept, "detect_next", counting_next, raising=False)
    cfg = {"listeners": [{"name": "in", "port": 0, "protocol": "auto",
                          "detect_timeout_ms": 60_000,
                          "filter_chains": [{"name": "p", "match": {"transport": "plaintext"},
                                             "protocol": "auto", "route_table": "rt"}]}],
           "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "a", "rules": [
               {"backends": [{"cluster": "c"}]}]}]}],
           "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}
    n = 3000
    async with running_proxy(cfg) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port("in"))
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            w.write(b"A")
            await asyncio.sleep(0)  # (the proxy shares this loop: it reads each byte apart)
            await asyncio.sleep(0)
        w.write(b" / HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.wait_for(r.readline(), 5)
        w.close()
    assert scanned < 10 * n, f"{scanned} bytes scanned for a {n}-byte prefix"


# -- An HTTP/2 engine that is not built --------------------------------------------------------


async def test_http2_without_its_engine_is_refused_never_relayed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A build without the HTTP/2 engine (its import fails) relayed an h2 prior-knowledge
    connection as opaque TCP to the listener's cluster -- an HTTP/1 origin, or on a
    transparent listener the application itself -- past the route's filters, with nothing
    said.  Now it is refused (`http2_unavailable`), and HTTP/1 is still served."""
    from tests.support.rawservers import raw_server

    got: list[bytes] = []

    async def record(srv: Any, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await r.read(65536))

    # What `_h2_driver` keeps once the import failed (set here: a compiled module keeps the
    # modules it imported, so removing one from sys.modules would not fail its import).
    monkeypatch.setattr(detect, "_H2_MISSING", ["the engine is not built (test)"])
    async with raw_server(record) as srv, running_proxy({
            "listeners": [{"name": "in", "port": 0, "protocol": "auto", "cluster": "c"}],
            "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1",
                                                      "port": srv.port}]}]}) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port("in"))
        w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert await asyncio.wait_for(r.read(), 5) == b""  # closed, nothing answered
        w.close()
        await asyncio.sleep(0.1)
        assert srv.connections == 0 and got == []
        errors = p.server.metrics.protocol_errors
        assert errors.labels("in", "http2_unavailable").value == 1
