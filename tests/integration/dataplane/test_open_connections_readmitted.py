"""Open connections meet a narrowed admission at the swap (ADR 0127), through a real proxy in
process: a listener's `sources` (ADR 0098) and a refusing destination (ADR 0114) were checked
at accept only, so a change that narrowed them left every open connection running under the
admission it had -- opaque relays, keep-alive HTTP/1 and HTTP/2 connections, upgraded
tunnels.  Now the swap asks each open connection again: a relay or tunnel is reset at once,
an idle HTTP connection closed, a busy one drained (its response in flight says `Connection:
close`, HTTP/2 gets GOAWAY) and a request routed on it after the swap answered 403; one still
being detected is refused as at accept.  A transparent listener that stops passing through
(REGISTRY_ONLY) closes its passthrough relays after the grace (`no_destination`).  A swap that
widens the admission, or changes nothing of it, ends nothing.

The listener is a node agent's pod listener as the compiler renders it (transparent,
`sources`, destination rules, passthrough); only the kernel's SO_ORIGINAL_DST answer is stood
in for, per client socket (the real redirect, with real processes:
`tests/e2e/test_node_agent_readmission.py`).  Clients bind 127.0.0.1 (a source the narrowed
`sources` keep) and 127.0.0.2 (one they drop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.support.certs import self_signed
from tests.support.flow_lines import use_engine
from tests.support.h2raw import RawH2, request
from tests.support.logsink import log_config
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.rawservers import (
    EchoUpgrader,
    Handler,
    RawServer,
    named_origin,
    raw_server,
    read_response_within,
)
from tests.support.tcp_streams import HeldStream, recording_echo

from tulle.dataplane.listeners import detect
from tulle.dataplane.server import SWAP_DRAIN_GRACE

pytestmark = pytest.mark.both_loops

KEPT, CUT = "127.0.0.1", "127.0.0.2"
VIP = ("10.96.0.7", 80)
"""A Service's virtual IP: its rule routes HTTP (sniffed) to the origin."""
T = TypeVar("T")
LOG_LINE = "open connection(s) the new config no longer admits ended"


class Redirects:
    """The original destination of each client socket, by its address (SO_ORIGINAL_DST stood
    in for)."""

    def __init__(self) -> None:
        self.by_client: dict[tuple[str, int], tuple[str, int]] = {}

    def __call__(self, sock: socket.socket) -> tuple[str, int] | None:
        peer = sock.getpeername()
        return self.by_client.get((peer[0], peer[1]))

    async def socket_to(self, port: int, source: str, dst: tuple[str, int]) -> socket.socket:
        """A socket from `source`, connected to the listener on `port`, redirected from `dst`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        self.by_client[(source, sock.getsockname()[1])] = dst
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return sock

    async def stream(self, port: int, source: str, dst: tuple[str, int]) -> HeldStream:
        r, w = await asyncio.open_connection(sock=await self.socket_to(port, source, dst))
        return HeldStream(r, w)

    async def h2(self, port: int, source: str, dst: tuple[str, int]) -> RawH2:
        sock = await self.socket_to(port, source, dst)
        _, c = await asyncio.get_running_loop().create_connection(RawH2, sock=sock)
        return c


@pytest.fixture
def redirects(monkeypatch: pytest.MonkeyPatch) -> Redirects:
    table = Redirects()
    monkeypatch.setattr(detect, "original_destination", table)
    return table


@pytest.fixture(params=["splice", "copy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_engine(str(request.param), monkeypatch)


def pod(origin: int, sources: list[str], *, refuse: list[dict[str, Any]] | None = None,
        passthrough: bool = True, extra: list[dict[str, Any]] | None = None,
        flow_log: Path | None = None) -> dict[str, Any]:
    """A node agent's pod listener: the VIP's rule (HTTP to `origin`), `extra` rules, then the
    refusing ones, passthrough for the rest."""
    cfg: dict[str, Any] = {
        "listeners": [{
            "name": "pod", "port": 0, "mode": "transparent", "protocol": "auto",
            "direction": "outbound", "passthrough": passthrough, "sources": sources,
            "destinations": [{"address": VIP[0], "port": VIP[1], "route_table": "rt"},
                             *(extra or []), *(refuse or [])]}],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1",
                                                       "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": [{"backends": [{"cluster": "origin"}]}]}]}],
    }
    if flow_log is not None:
        cfg["telemetry"] = {"flow_log": log_config(flow_log)}
    return cfg


@contextlib.asynccontextmanager
async def pod_proxy(cfg: dict[str, Any]) -> AsyncIterator[tuple[RunningProxy, int]]:
    async with running_proxy(cfg) as p:
        yield p, p.port("pod")


async def get(s: HeldStream, path: str = "/") -> tuple[int, bytes, bool]:
    """One keep-alive request on `s`: status, body, whether the answer said `Connection:
    close`."""
    s.w.write(b"GET %b HTTP/1.1\r\nhost: svc\r\n\r\n" % path.encode())
    resp = await read_response_within(s.r, 5)
    return resp.status, resp.body, resp.header(b"connection") == b"close"


async def h2_get(c: RawH2) -> int:
    sid = c.headers(request("GET", "/h2"))
    await c.wait_stream(sid)
    return c.status.get(sid, 0)


def relays(p: RunningProxy) -> int:
    return sum(1 for c in p.server.listeners["pod"].connections
               if type(c).__name__ in ("SpliceRelay", "CopyRelay"))


async def eventually(probe: Callable[[], Awaitable[T | None]], seconds: float) -> T:
    async with asyncio.timeout(seconds):
        while (got := await probe()) is None:
            await asyncio.sleep(0.02)
    return got


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if LOG_LINE in r.getMessage()]


def half_then_rest() -> tuple[asyncio.Event, Handler]:
    """An origin that sends the first half of each response, then the rest once the event is
    set; it records each request head (`requests`)."""
    go_on = asyncio.Event()

    async def slow(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            srv.requests.append(await r.readuntil(b"\r\n\r\n"))
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
            await w.drain()
            await go_on.wait()
            w.write(b"-half")
            await w.drain()

    return go_on, slow


async def test_narrowed_sources_end_every_open_connection_they_no_longer_list(
        engine: str, redirects: Redirects, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    """A pod's address changed: the connections of its old address stop borrowing its
    listener (and its identity) at the swap -- relay reset, idle HTTP/1 closed, HTTP/2 told
    GOAWAY and closed; the pod's own go on."""
    caplog.set_level(logging.INFO, "tulle.proxy")
    flows = tmp_path / "flows.log"
    async with recording_echo() as app, raw_server(named_origin(b"svc")) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"], flow_log=flows)) as (p, port):
        outside = (KEPT, app.port)  # no rule: passed through
        held: dict[str, dict[str, Any]] = {}
        for source in (KEPT, CUT):
            relay = await redirects.stream(port, source, outside)
            assert await relay.echoes(f"{source}:hello".encode())
            h1 = await redirects.stream(port, source, VIP)
            assert await get(h1) == (200, b"svc", False)
            h2 = await redirects.h2(port, source, VIP)
            assert await h2_get(h2) == 200
            held[source] = {"relay": relay, "h1": h1, "h2": h2}
        assert relays(p) == 2

        await p.apply(pod(origin.port, [f"{KEPT}/32"], flow_log=flows))
        assert relays(p) == 1  # at the swap itself: no grace for a refusal
        cut = held[CUT]
        assert await cut["relay"].cut_within(2)
        await cut["relay"].write_after(b"cut:after")
        assert await cut["h1"].cut_within(2)
        await cut["h2"].wait_closed()
        assert cut["h2"].goaways == [1]  # the last stream it took: the one it answered
        await asyncio.sleep(SWAP_DRAIN_GRACE + 0.1)  # past the grace: the rest still flows
        kept = held[KEPT]
        assert await kept["relay"].echoes(b"still")
        assert await get(kept["h1"]) == (200, b"svc", False)
        assert await h2_get(kept["h2"]) == 200
        assert [bytes(b) for b in app.received] == [b"127.0.0.1:hellostill", b"127.0.0.2:hello"]

        assert p.metric("tulle_proxy_tcp_config_closes_total", listener="pod",
                        reason="source_refused") == 1
        assert p.metric("tulle_proxy_http_config_closes_total", listener="pod",
                        reason="source_refused") == 2
        assert p.metric("tulle_proxy_tcp_config_closes_total") == 1
        assert p.metric("tulle_proxy_protocol_errors_total", kind="source_refused") == 0
        assert log_lines(caplog) == [
            "listener pod: 3 open connection(s) the new config no longer admits ended "
            "(source_refused 3): relays and tunnels reset, HTTP connections closed or "
            "drained after the request in flight"]
        async def refused() -> dict[str, Any] | None:
            records = [json.loads(x) for x in flows.read_text().splitlines()] \
                if flows.exists() else []
            return next((r for r in records if r["close_reason"] == "source_refused"), None)
        record = await eventually(refused, 5)
        assert record["source_address"] == CUT and record["protocol"] == "tcp"
        assert record["verdict"] == "deny:listener:source_refused"
        assert record["bytes_received"] == len(b"127.0.0.2:hello")
        for c in (kept["relay"], kept["h1"]):
            c.close()
        kept["h2"].close()


async def test_a_busy_http1_connection_answers_in_flight_then_403_then_closes(
        redirects: Redirects) -> None:
    """Refused while a response is on its way: that response is finished (it was admitted
    when it was routed), a request pipelined behind it is answered 403 with `Connection:
    close` and never reaches the origin, and the connection closes."""
    go_on, slow = half_then_rest()
    async with raw_server(slow) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        s = await redirects.stream(port, CUT, VIP)
        s.w.write(b"GET /1 HTTP/1.1\r\nhost: svc\r\n\r\nGET /2 HTTP/1.1\r\nhost: svc\r\n\r\n")
        head = await asyncio.wait_for(s.r.readuntil(b"first"), 5)
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in head.lower()
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        await p.apply(pod(origin.port, [f"{KEPT}/32", "127.0.0.3/32"]))  # asked again: once
        go_on.set()
        assert await asyncio.wait_for(s.r.readexactly(5), 5) == b"-half"
        resp = await read_response_within(s.r, 5)
        assert resp.status == 403 and resp.header(b"connection") == b"close"
        assert resp.body == b"connection no longer admitted on listener pod: source_refused\n"
        assert await s.cut_within(2)
        assert len(origin.requests) == 1
        assert p.metric("tulle_proxy_requests_total", listener="pod", response_code="403") == 1
        assert p.metric("tulle_proxy_http_config_closes_total", reason="source_refused") == 1


async def test_an_upgraded_tunnel_is_cut_as_a_relay_is(redirects: Redirects) -> None:
    upgrader = EchoUpgrader()

    async with raw_server(upgrader) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        s = await redirects.stream(port, CUT, VIP)
        s.w.write(b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        head = await asyncio.wait_for(s.r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        s.w.write(b"ping")
        assert await asyncio.wait_for(s.r.readexactly(9), 5) == b"echo:ping"
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        assert await s.cut_within(2)
        await asyncio.wait_for(upgrader.closed.wait(), 2)
        assert p.metric("tulle_proxy_http_config_closes_total", reason="source_refused") == 1


async def test_a_connection_still_being_detected_is_refused_as_at_accept(
        redirects: Redirects) -> None:
    async with raw_server(named_origin(b"svc")) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        silent = await redirects.stream(port, CUT, VIP)  # sniffing: nothing sent yet
        await asyncio.sleep(0.05)
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        assert await silent.cut_within(2)
        assert p.metric("tulle_proxy_protocol_errors_total", listener="pod",
                        kind="source_refused") == 1
        assert origin.connections == 0


async def test_a_destination_that_now_refuses_resets_its_open_relays(
        engine: str, redirects: Redirects) -> None:
    """An address became a meshed agent pod's: the passthrough relays to its undeclared port
    are reset at the swap (they went past that pod's inbound side); another destination's
    go on."""
    async with recording_echo() as pod_app, recording_echo() as other, \
            raw_server(named_origin(b"svc")) as origin, \
            pod_proxy(pod(origin.port, [])) as (p, port):
        to_pod = await redirects.stream(port, KEPT, (KEPT, pod_app.port))
        elsewhere = await redirects.stream(port, KEPT, (KEPT, other.port))
        assert await to_pod.echoes(b"pod:hello") and await elsewhere.echoes(b"other:hello")
        await p.apply(pod(origin.port, [], refuse=[{"address": KEPT, "port": pod_app.port,
                                                    "refuse": True}]))
        assert relays(p) == 1
        assert await to_pod.cut_within(2)
        await to_pod.write_after(b"pod:after")
        await asyncio.sleep(SWAP_DRAIN_GRACE + 0.1)
        assert await elsewhere.echoes(b"other:still")
        assert [bytes(b) for b in pod_app.received] == [b"pod:hello"]
        assert p.metric("tulle_proxy_tcp_config_closes_total", listener="pod",
                        reason="destination_refused") == 1
        # A new connection there is refused at accept, as before.
        again = await redirects.stream(port, KEPT, (KEPT, pod_app.port))
        assert await again.cut_within(2)
        assert len(pod_app.received) == 1
        elsewhere.close()


async def test_registry_only_closes_passthrough_relays_after_the_grace(
        engine: str, redirects: Redirects) -> None:
    """ALLOW_ANY -> REGISTRY_ONLY: a passthrough relay has no way in any more and is closed
    (FIN) when the swap's grace ends, as a relay whose filter chain left is (ADR 0117); a relay
    whose destination has a rule goes on."""
    async with recording_echo() as outside, recording_echo() as db, \
            raw_server(named_origin(b"svc")) as origin:
        tcp_rule = [{"address": "10.96.0.8", "port": 5432, "protocol": "tcp", "cluster": "db"}]

        def cfg(passthrough: bool) -> dict[str, Any]:
            out = pod(origin.port, [], passthrough=passthrough, extra=tcp_rule)
            out["clusters"].append({"name": "db", "protocol": "tcp", "endpoints": [
                {"address": "127.0.0.1", "port": db.port}]})
            return out

        async with pod_proxy(cfg(True)) as (p, port):
            passing = await redirects.stream(port, KEPT, (KEPT, outside.port))
            to_db = await redirects.stream(port, KEPT, ("10.96.0.8", 5432))
            assert await passing.echoes(b"out:hello") and await to_db.echoes(b"db:hello")
            await p.apply(cfg(False))
            assert relays(p) == 2  # the grace: bytes in flight land
            assert await passing.cut_within(2)
            assert p.metric("tulle_proxy_tcp_config_closes_total", listener="pod",
                            reason="no_destination") == 1
            assert await to_db.echoes(b"db:still")
            to_db.close()


async def test_a_chain_listeners_narrowed_sources_end_its_open_connections(
        engine: str, tmp_path: Path) -> None:
    """`sources` on a listener with filter chains: the same at the swap, for a relay, HTTP/1
    in plaintext and over TLS, and a connection still in its TLS handshake (refused as at
    accept)."""
    crt, key = self_signed(tmp_path)
    localhost = {"name": "localhost", "cert_chain_pem": Path(crt).read_text(),
                 "private_key_pem": Path(key).read_text()}

    def cfg(app: int, origin: int, sources: list[str]) -> dict[str, Any]:
        return {
            "listeners": [{"name": "pod", "port": 0, "sources": sources, "filter_chains": [
                {"name": "web", "match": {"transport": "plaintext"}, "protocol": "auto",
                 "route_table": "rt", "cluster": "app"},
                {"name": "tls", "match": {"transport": "tls"}, "protocol": "http1",
                 "tls": {"identity": "localhost"}, "route_table": "rt"}]}],
            "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1",
                                                           "port": origin}]},
                         {"name": "app", "protocol": "tcp", "endpoints": [
                             {"address": "127.0.0.1", "port": app}]}],
            "route_tables": [{"name": "rt", "virtual_hosts": [
                {"name": "any", "domains": ["*"],
                 "rules": [{"backends": [{"cluster": "origin"}]}]}]}],
            "identities": [localhost],
        }

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    async with recording_echo() as app, raw_server(named_origin(b"svc")) as origin, \
            running_proxy(cfg(app.port, origin.port, ["127.0.0.0/8"])) as p:
        port = p.port("pod")
        relay = await HeldStream.open(port, CUT)
        assert await relay.echoes(b"\x00opaque")  # not HTTP: relayed to the chain's cluster
        h1 = await HeldStream.open(port, CUT)
        assert await get(h1) == (200, b"svc", False)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls, local_addr=(CUT, 0),
                                             server_hostname="localhost")
        over_tls = HeldStream(r, w)
        assert await get(over_tls) == (200, b"svc", False)
        # A client that sends its ClientHello and no more: the proxy's handshake waits.
        hello_in, hello_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.wrap_bio(hello_in, hello_out, server_hostname="localhost").do_handshake()
        stalled = await HeldStream.open(port, CUT)
        stalled.w.write(hello_out.read())
        connections = p.server.listeners["pod"].connections
        async with asyncio.timeout(5):
            while not any(type(c).__name__ == "TLSAccept" for c in connections):
                await asyncio.sleep(0.01)

        await p.apply(cfg(app.port, origin.port, [f"{KEPT}/32"]))
        for c in (relay, h1, over_tls, stalled):
            assert await c.cut_within(2)
        assert p.metric("tulle_proxy_tcp_config_closes_total", reason="source_refused") == 1
        assert p.metric("tulle_proxy_http_config_closes_total", reason="source_refused") == 2
        assert p.metric("tulle_proxy_protocol_errors_total", kind="source_refused") == 1


async def test_a_swap_that_widens_or_keeps_the_admission_ends_nothing(
        engine: str, redirects: Redirects, caplog: pytest.LogCaptureFixture) -> None:
    """Guards the other way: sources widened, a destination that refuses another address, a
    rule added -- every open connection still flows, nothing is counted (passes before and
    after the change)."""
    caplog.set_level(logging.INFO, "tulle.proxy")
    async with recording_echo() as app, raw_server(named_origin(b"svc")) as origin, \
            pod_proxy(pod(origin.port, [f"{CUT}/32", f"{KEPT}/32"])) as (p, port):
        relay = await redirects.stream(port, CUT, (KEPT, app.port))
        h1 = await redirects.stream(port, CUT, VIP)
        h2 = await redirects.h2(port, CUT, VIP)
        assert await relay.echoes(b"hello") and await get(h1) == (200, b"svc", False)
        assert await h2_get(h2) == 200
        for cfg in (pod(origin.port, ["127.0.0.0/8"]),
                    pod(origin.port, ["127.0.0.0/8"],
                        refuse=[{"address": "10.0.0.9", "refuse": True}]),
                    pod(origin.port, ["127.0.0.0/8"],
                        extra=[{"address": "10.96.0.9", "port": 80, "route_table": "rt"}],
                        refuse=[{"address": "10.0.0.9", "refuse": True}])):
            await p.apply(cfg)
            await asyncio.sleep(SWAP_DRAIN_GRACE + 0.1)
            assert await relay.echoes(b"more")
            assert await get(h1) == (200, b"svc", False)
            assert await h2_get(h2) == 200
        assert p.metric("tulle_proxy_tcp_config_closes_total") == 0
        assert p.metric("tulle_proxy_http_config_closes_total") == 0
        assert p.metric("tulle_proxy_protocol_errors_total") == 0
        assert not log_lines(caplog)
        relay.close()
        h1.close()
        h2.close()
