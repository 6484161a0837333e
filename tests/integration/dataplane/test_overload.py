"""Connection caps and the overload guard, through real sockets.

Each case: what the refused or rejected client saw (a reset before any byte, or a 503 `OL`
with `connection: close`), what the origin received (a raw peer recording every request head:
only the legitimate ones), that the connections already open are still served, that admin's
/ready still answers, and the metric that counted it.  The descriptor and memory monitors run
in a real proxy process (its own RLIMIT_NOFILE and RSS); the caps run in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.certs import self_signed
from tests.support.h2peers import H2Client
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import RawServer, closed_by_peer, connect, raw_server, read_response
from tests.support.subproc import ProxyProcess, http_get, proxy_process

from tulle.dataplane.overload import read_rss


async def keep_alive_ok(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Record every request head; answer each with a small keep-alive 200."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        await w.drain()


def paths(srv: RawServer) -> list[str]:
    return sorted(h.split(b" ", 2)[1].decode() for h in srv.requests)


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r = r
        self.w = w

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await connect(port))

    async def get(self, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        self.w.write(f"GET {path} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
        async with asyncio.timeout(5):
            resp = await read_response(self.r)
        return resp.status, dict(resp.headers), resp.body

    def close(self) -> None:
        self.w.close()


async def first_byte(port: int, path: str, keep: list[Client]) -> bytes:
    """Connect and send a request; the first byte of the answer, b"" when the proxy closed or
    reset the connection without one (on loopback its RST may even beat the connect's
    completion).  An open connection is appended to `keep`."""
    try:
        c = await Client.open(port)
    except ConnectionError:
        return b""
    keep.append(c)
    c.w.write(f"GET {path} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
    async with asyncio.timeout(5):
        try:
            return await c.r.read(1)
        except ConnectionError:
            return b""


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    try:
        yield opened
    finally:
        for c in opened:
            c.close()


async def wait_for(cond: Any, what: str, timeout: float = 5.0) -> None:
    """Poll `cond()` (sync or async) every 10 ms until true; bounded."""
    async with asyncio.timeout(timeout):
        while True:
            v = cond()
            if asyncio.iscoroutine(v):
                v = await v
            if v:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(what)  # pragma: no cover


def ready(p: RunningProxy) -> Any:
    return http_get(p.admin_port, "/ready")


# -- caps --------------------------------------------------------------------------------


async def test_listener_cap_resets_the_next_connection_and_spares_the_open_ones() -> None:
    async with raw_server(keep_alive_ok) as origin:
        cfg = simple_config(origin.port)
        cfg["listeners"][0]["max_connections"] = 3
        async with running_proxy(cfg, admin=True) as p, clients() as open_:
            for i in range(3):
                c = await Client.open(p.port())
                open_.append(c)
                assert (await c.get(f"/first/{i}"))[0] == 200

            # The kernel completes the handshake; the proxy resets it before reading.
            spent: list[Client] = []
            assert await first_byte(p.port(), "/refused", spent) == b""
            for c in spent:
                c.close()
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            listener="out", reason="listener_limit") == 1
            assert p.metric("tulle_proxy_downstream_connections_active", listener="out") == 3

            for i, c in enumerate(open_):  # the open connections never noticed
                assert (await c.get(f"/second/{i}"))[0] == 200
            assert await ready(p) == (200, b"READY\n")
            assert paths(origin) == sorted([*(f"/first/{i}" for i in range(3)),
                                            *(f"/second/{i}" for i in range(3))])

            open_.pop().close()  # room for one again
            await wait_for(lambda: p.metric("tulle_proxy_downstream_connections_active",
                                            listener="out") == 2, "the close was not seen")
            c = await Client.open(p.port())
            open_.append(c)
            assert (await c.get("/after"))[0] == 200
            assert p.metric("tulle_proxy_downstream_connections_overflow_total") == 1


async def test_listener_cap_is_exact_under_a_burst_of_connections() -> None:
    """30 connections at once: exactly the cap is admitted, every other one is reset before its
    bytes are read, and the origin sees only the admitted ones' requests."""
    async with raw_server(keep_alive_ok) as origin:
        cfg = simple_config(origin.port)
        cfg["listeners"][0]["max_connections"] = 5
        async with running_proxy(cfg) as p, clients() as open_:
            open_.extend(await asyncio.gather(*(Client.open(p.port()) for _ in range(30))))

            async def outcome(i: int, c: Client) -> str:
                c.w.write(f"GET /burst/{i} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
                try:
                    async with asyncio.timeout(5):
                        resp = await read_response(c.r)
                except (ConnectionError, asyncio.IncompleteReadError):
                    return "reset"
                return str(resp.status)

            results = await asyncio.gather(*(outcome(i, c) for i, c in enumerate(open_)))
            assert sorted(results).count("200") == 5, results
            assert results.count("reset") == 25, results
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            reason="listener_limit") == 25
            assert p.metric("tulle_proxy_downstream_connections_active") == 5
            assert len(origin.requests) == 5


async def test_process_cap_spans_listeners_and_admin_is_exempt() -> None:
    async with raw_server(keep_alive_ok) as origin:
        cfg = simple_config(origin.port, settings={"max_connections": 2})
        cfg["listeners"].append({"name": "out2", "port": 0, "protocol": "auto",
                                 "route_table": "rt"})
        async with running_proxy(cfg, admin=True) as p, clients() as open_:
            a = await Client.open(p.port("out"))
            b = await Client.open(p.port("out2"))  # a sniffing listener: detection hands over
            open_ += [a, b]
            assert (await a.get("/a"))[0] == 200
            assert (await b.get("/b"))[0] == 200

            for name in ("out", "out2"):
                assert await first_byte(p.port(name), f"/refused/{name}", open_) == b""
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            reason="process_limit") == 2
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            listener="out2", reason="process_limit") == 1
            for _ in range(3):  # admin takes any number of connections meanwhile
                assert await ready(p) == (200, b"READY\n")
            assert (await a.get("/a2"))[0] == 200
            assert (await b.get("/b2"))[0] == 200
            assert paths(origin) == ["/a", "/a2", "/b", "/b2"]


# -- the overload guard in the test's process (fast: memory limit set from our own RSS) ---


def rejecting_config(origin_port: int, protocol: str = "http1") -> dict[str, Any]:
    """Memory pressure ~0.8 of a limit derived from this process's RSS: past
    `reject_requests_percent` (50), short of `stop_accepting_percent` (100)."""
    return simple_config(origin_port, protocol=protocol, settings={"overload": {
        "file_descriptors": False, "max_rss_bytes": int(read_rss() / 0.8),
        "reject_requests_percent": 50, "stop_accepting_percent": 100, "sample_interval_ms": 20}})


async def test_http1_requests_get_503_ol_and_close_while_rejecting() -> None:
    async with (raw_server(keep_alive_ok) as origin,
                running_proxy(rejecting_config(origin.port), admin=True) as p):
        c = await Client.open(p.port())
        status, headers, body = await c.get("/rejected")
        assert (status, body) == (503, b"overloaded\n")
        assert headers[b"connection"] == b"close"
        assert await closed_by_peer(c.r)
        c.close()
        assert p.metric("tulle_proxy_requests_total", response_code="503",
                        response_flags="OL") == 1
        assert p.metric("tulle_proxy_overload_actions_total", action="reject_request") == 1
        assert p.metric("tulle_proxy_overload_state") == 1
        assert await ready(p) == (200, b"READY\n")
        assert origin.requests == []

        # Pressure gone (the limit lifted by a new snapshot): served again.
        await p.apply(simple_config(origin.port))
        c = await Client.open(p.port())
        assert (await c.get("/served"))[0] == 200
        c.close()
        assert p.metric("tulle_proxy_overload_state") == 0
        assert paths(origin) == ["/served"]


async def test_http2_requests_get_503_ol_and_goaway_while_rejecting() -> None:
    async with (raw_server(keep_alive_ok) as origin,
                running_proxy(rejecting_config(origin.port, "http2")) as p):
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/rejected")
        assert r.status == 503 and bytes(r.body) == b"overloaded\n"
        await asyncio.wait_for(c.closed.wait(), 5)
        assert c.goaway == 0  # graceful GOAWAY (NO_ERROR): open a new connection later
        assert p.metric("tulle_proxy_requests_total", response_code="503",
                        response_flags="OL") == 1
        assert origin.requests == []


async def test_responses_disable_keep_alive_when_the_guard_starts_rejecting() -> None:
    """A request admitted before the state changed is served, but its response says close."""

    async def slow(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))
        await gate.wait()
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        await w.drain()

    gate = asyncio.Event()
    async with raw_server(slow) as origin, running_proxy(simple_config(origin.port)) as p:
        c = await Client.open(p.port())
        pending = asyncio.ensure_future(c.get("/in-flight"))
        await wait_for(lambda: origin.requests, "the request did not reach the origin")
        await p.apply(rejecting_config(origin.port))
        assert p.server.overload.rejecting
        gate.set()
        status, headers, _ = await pending
        assert status == 200 and headers[b"connection"] == b"close"
        assert await closed_by_peer(c.r)
        c.close()
        assert p.metric("tulle_proxy_overload_actions_total", action="disable_keepalive") == 1


# -- the monitors in a real proxy process ------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def set_nofile(pid: int, soft: int) -> None:
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


async def test_fd_monitor_rejects_then_stops_accepting_and_recovers(tmp_path: Path) -> None:
    async with raw_server(keep_alive_ok) as origin:
        cfg = simple_config(origin.port, settings={"overload": {
            "reject_requests_percent": 60, "stop_accepting_percent": 80, "sample_interval_ms": 20}})
        async with proxy_process(cfg, tmp_path) as p, clients() as open_:
            assert (await http_get(p.port(), "/warm-up"))[0] == 200  # the pooled upstream fd
            idle = open_fds(p.pid)
            limit = int(idle / 0.4) + 1  # idle at 40 %: 503 from 60 %, resets from 80 %
            set_nofile(p.pid, limit)
            await wait_for(lambda: _fd_pressure_at_least(p, 0.3), "the new limit was not sampled")

            # Keep-alive clients until one gets the 503 (each holds a descriptor).
            served = 0
            for i in range(limit):
                c = await Client.open(p.port())
                open_.append(c)
                status, headers, body = await c.get(f"/c/{i}")
                if status != 200:
                    break
                served += 1
            assert (status, body) == (503, b"overloaded\n"), (status, body)
            assert headers[b"connection"] == b"close"
            assert served >= 1
            assert await p.metric("tulle_proxy_overload_state") >= 1
            assert await p.admin("/ready") == (200, b"READY\n")

            # More connections until one is reset at accept (stop_accepting).
            refused = False
            for i in range(limit):
                first = await first_byte(p.port(), f"/late/{i}", open_)
                if not first:
                    refused = True
                    break
                assert first == b"H"  # a 503, since the guard rejects
            assert refused
            assert await p.metric("tulle_proxy_overload_state") == 2
            assert await p.metric("tulle_proxy_downstream_connections_overflow_total",
                                  reason="overload") >= 1
            assert await p.admin("/ready") == (200, b"READY\n")  # admin: never refused

            for c in open_:
                c.close()
            open_.clear()
            await wait_for(lambda: _state_is(p, 0), "the guard did not recover")
            assert (await http_get(p.port(), "/recovered"))[0] == 200
            assert "overload: normal -> reject_requests" in p.log()
            assert "overload: stop_accepting -> " in p.log()
            # The origin saw the served requests and nothing else.
            assert paths(origin) == sorted(["/warm-up", "/recovered",
                                            *(f"/c/{i}" for i in range(served))])


async def _fd_pressure_at_least(p: ProxyProcess, value: float) -> bool:
    return await p.metric("tulle_proxy_overload_pressure", resource="file_descriptors") >= value


async def _state_is(p: ProxyProcess, value: int) -> bool:
    return await p.metric("tulle_proxy_overload_state") == value


def rss_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_memory_monitor_rejects_and_stops_accepting_below_idle_rss(
        tmp_path: Path) -> None:
    async with raw_server(keep_alive_ok) as origin:
        base = simple_config(origin.port)
        async with proxy_process(base, tmp_path) as p:
            assert (await http_get(p.port(), "/before"))[0] == 200
            keep = await Client.open(p.port())
            assert (await keep.get("/keep"))[0] == 200
            idle = rss_of(p.pid)

            def with_limit(limit: int) -> dict[str, Any]:
                cfg = dict(p.config)
                cfg["settings"] = {"overload": {
                    "max_rss_bytes": limit, "reject_requests_percent": 50,
                    "stop_accepting_percent": 95, "sample_interval_ms": 20}}
                return cfg

            # Pressure ~0.75: requests rejected, connections still accepted.
            p.write_config(with_limit(int(idle / 0.75)))
            p.signal(signal.SIGHUP)
            await wait_for(lambda: _state_is(p, 1), "reject_requests not reached")
            status, headers, body = await keep.get("/keep-rejected")
            assert (status, body, headers[b"connection"]) == (503, b"overloaded\n", b"close")
            keep.close()
            assert (await http_get(p.port(), "/new-rejected"))[0] == 503
            assert await p.admin("/ready") == (200, b"READY\n")

            # A limit below idle RSS: new connections reset at accept, admin still answers.
            p.write_config(with_limit(idle // 2))
            p.signal(signal.SIGHUP)
            await wait_for(lambda: _state_is(p, 2), "stop_accepting not reached")
            spent: list[Client] = []
            assert await first_byte(p.port(), "/refused", spent) == b""
            for c in spent:
                c.close()
            assert await p.admin("/ready") == (200, b"READY\n")
            assert await p.metric("tulle_proxy_downstream_connections_overflow_total",
                                  reason="overload") == 1
            assert await p.metric("tulle_proxy_requests_total", response_flags="OL") == 2

            # The limit lifted: served again.
            p.write_config(base | {"listeners": p.config["listeners"],
                                   "admin": p.config["admin"]})
            p.signal(signal.SIGHUP)
            await wait_for(lambda: _state_is(p, 0), "no recovery")
            assert (await http_get(p.port(), "/after"))[0] == 200
            assert paths(origin) == ["/after", "/before", "/keep"]


@pytest.mark.both_loops  # the proxy drives TLS with loop.start_tls: check both loops
async def test_tls_handshakes_count_against_the_listener_cap(tmp_path: Path) -> None:
    """Clients that connect to a TLS listener and never send a ClientHello hold a descriptor
    each (for 60 s) without counting against `max_connections`, so the cap does not bound
    descriptors on TLS listeners: past the cap such connections must be reset and counted."""
    crt, key = self_signed(tmp_path)
    async with raw_server(keep_alive_ok) as origin:
        cfg = simple_config(origin.port)
        cfg["listeners"][0]["max_connections"] = 2
        cfg["listeners"][0]["tls"] = {"cert_file": crt, "key_file": key}
        async with running_proxy(cfg) as p:
            silent = [await connect(p.port()) for _ in range(6)]

            async def refused(r: asyncio.StreamReader) -> bool:
                try:
                    return await asyncio.wait_for(r.read(1), 1.0) == b""
                except ConnectionError:
                    return True
                except TimeoutError:
                    return False

            outcomes = await asyncio.gather(*(refused(r) for r, _ in silent))
            for _, w in silent:
                w.close()
            assert outcomes.count(True) >= 4, outcomes
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            listener="out", reason="listener_limit") >= 4
            # The slots of the silent clients that left are free again: a real TLS client
            # is served, and it is the only request the origin ever saw.
            await wait_for(lambda: p.metric("tulle_proxy_downstream_connections_active",
                                            listener="out") == 0, "slots not released")
            assert await tls_get(p.port(), "/after") == 200
            assert paths(origin) == ["/after"]


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def tls_get(port: int, path: str) -> int:
    """One HTTP/1.1 request over TLS on a fresh connection; the response status."""
    async with asyncio.timeout(5):
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())
        try:
            w.write(f"GET {path} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
            return (await read_response(r)).status
        finally:
            w.close()


@pytest.mark.both_loops
async def test_tls_handshake_timeout_and_failure_release_the_slot(tmp_path: Path) -> None:
    """A client that never completes its handshake holds its slot only for
    `tls_handshake_timeout_ms`; one whose handshake fails releases it at once.  Either way
    the next client is served, and each is counted."""
    crt, key = self_signed(tmp_path)
    async with raw_server(keep_alive_ok) as origin:
        cfg = simple_config(origin.port)
        cfg["settings"] = {"tls_handshake_timeout_ms": 300}
        cfg["listeners"][0]["max_connections"] = 1
        cfg["listeners"][0]["tls"] = {"cert_file": crt, "key_file": key}
        async with running_proxy(cfg) as p:
            loop = asyncio.get_running_loop()
            silent_r, silent_w = await connect(p.port())
            started = loop.time()
            await wait_for(lambda: p.metric("tulle_proxy_downstream_connections_active",
                                            listener="out") == 1, "silent client not counted")
            r2, w2 = await connect(p.port())  # over the cap while the first one is silent
            assert await closed_by_peer(r2)
            w2.close()
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            listener="out", reason="listener_limit") == 1
            async with asyncio.timeout(3):
                assert await closed_by_peer(silent_r)
            assert 0.25 <= loop.time() - started < 2.5
            silent_w.close()
            await wait_for(lambda: p.metric("tulle_proxy_protocol_errors_total", listener="out",
                                            kind="tls_handshake_timeout") == 1, "not counted")
            assert await tls_get(p.port(), "/one") == 200

            await wait_for(lambda: p.metric("tulle_proxy_downstream_connections_active",
                                            listener="out") == 0, "client /one still open")
            bad_r, bad_w = await connect(p.port())  # not TLS at all: the handshake fails
            bad_w.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            async with asyncio.timeout(3):
                assert await closed_by_peer(bad_r)
            bad_w.close()
            await wait_for(lambda: p.metric("tulle_proxy_protocol_errors_total", listener="out",
                                            kind="tls_handshake") == 1, "failure not counted")
            assert await tls_get(p.port(), "/two") == 200
            assert paths(origin) == ["/one", "/two"]
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            listener="out", reason="listener_limit") == 1
