"""Every byte on an HTTP port goes through the HTTP stack; sniffing relays only what is not HTTP.

The attack (issue 6, item 4): inbound HTTP ports were compiled `auto` + cluster, and whatever
the sniffer did not know (a leading CRLF, a lower-case method, PROPFIND, PURGE) was relayed to
the application as raw bytes — a CL+TE smuggling payload arrived verbatim — while silent or
trickling clients became TCP relays holding an application connection with no timeout.

Two listeners are attacked here, each in front of a raw origin that records every byte:

* `inbound`: the listener the control plane compiles for a workload port named `http` (the
  real compiler output, only the timeouts shortened): HTTP only, no sniffing.
* `auto`: a sniffing listener with a cluster (a port nobody described).

Each case asserts what the origin received (nothing, or exactly one well-formed request), what
the client got, the metric that counted it, and that the listener still serves afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from tests.support.proxy import RunningProxy, free_port, running_proxy
from tests.support.rawservers import closed_by_peer, connect, read_response

from tulle.controlplane.compiler import MeshInputs, compile_mesh

pytestmark = pytest.mark.both_loops

SETTINGS = {"header_timeout_ms": 200, "tcp_idle_timeout_ms": 300}
"""Short timeouts keep the tests fast; the deadline sweeper ticks every 50 ms with these."""
DETECT_TIMEOUT_MS = 150


@dataclass
class Recorder:
    """A raw HTTP/1.1 origin: records every byte, answers each complete request with 200."""

    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def only_well_formed(self) -> bool:
        """Everything received is whole requests, each a request-line of a known shape."""
        whole = b"".join(self.requests) == bytes(self.received)
        shapes = all(re.match(rb"[A-Z]+ /\S* HTTP/1\.1\r\n", r) for r in self.requests)
        return whole and shapes


@contextlib.asynccontextmanager
async def recording_origin() -> AsyncIterator[Recorder]:
    rec = Recorder()
    tasks: set[asyncio.Task[Any]] = set()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        rec.connections += 1
        buf = b""
        try:
            while data := await r.read(65536):
                rec.received += data
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    m = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
                    n = int(m.group(1)) if m else 0
                    if len(rest) < n:
                        break
                    rec.requests.append(head + b"\r\n\r\n" + rest[:n])
                    buf = rest[n:]
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except ConnectionError:
            pass
        finally:
            rec.closed.set()
            w.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    rec.port = srv.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        srv.close()
        for t in tasks:
            t.cancel()


def inbound_config(app_port: int) -> tuple[dict[str, Any], str]:
    """What the control plane compiles for a workload whose port is named `http`."""
    workload = {
        "apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": "app-0", "namespace": "shop", "labels": {"app": "app"}},
        "spec": {"address": "127.0.0.1",
                 "ports": [{"name": "http", "port": free_port(), "targetPort": app_port}]},
    }
    # mTLS DISABLED: the attack is on the port's HTTP parsing by raw plaintext clients.  Under
    # STRICT (the default) the same listener sits behind an mTLS filter chain and they would be
    # closed before any HTTP (tests/integration/controlplane/test_mtls.py, ADR 0033).
    mesh = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "DISABLED"}}}
    result = compile_mesh(MeshInputs.from_resources([mesh, workload]))
    raw = msgspec.to_builtins(result.snapshots[("shop", "app-0")])
    (listener,) = raw["listeners"]
    assert listener["protocol"] == "http1" and listener["direction"] == "inbound"
    raw["admin"]["port"] = 0
    raw["settings"].update(SETTINGS)
    return raw, listener["name"]


def auto_config(app_port: int, *, cluster: bool = True) -> tuple[dict[str, Any], str]:
    listener: dict[str, Any] = {"name": "auto", "port": 0, "protocol": "auto",
                                "detect_timeout_ms": DETECT_TIMEOUT_MS}
    if cluster:
        listener["cluster"] = "app"
    else:  # HTTP only by route table, like the outbound listener
        listener["route_table"] = "rt"
    return {
        "admin": {"port": 0},
        "settings": SETTINGS,
        "listeners": [listener],
        "clusters": [{"name": "app", "protocol": "http1",
                      "endpoints": [{"address": "127.0.0.1", "port": app_port}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "app"}]}]}]}],
    }, "auto"


@pytest.fixture(params=["inbound", "auto"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def setup(kind: str) -> AsyncIterator[tuple[RunningProxy, str, Recorder]]:
    async with recording_origin() as rec:
        cfg, name = (inbound_config if kind == "inbound" else auto_config)(rec.port)
        async with running_proxy(cfg) as p:
            yield p, name, rec


async def still_serves(p: RunningProxy, name: str, rec: Recorder) -> None:
    """A legitimate request afterwards: served, and the origin sees exactly it."""
    before = len(rec.requests)
    r, w = await connect(p.port(name))
    w.write(b"GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 5)
    w.close()
    assert resp.status == 200
    assert len(rec.requests) == before + 1
    assert rec.requests[-1].startswith(b"GET /after HTTP/1.1\r\n")


SMUGGLE = (b"Host: app\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\nX: x")
"""CL+TE: a front end using Content-Length and a back end using chunked disagree on where the
message ends; the hidden `GET /admin` is the smuggled request."""


@pytest.mark.parametrize("start", [
    b"\r\nPOST / HTTP/1.1\r\n",  # a leading empty line
    b"post / HTTP/1.1\r\n",  # a lower-case method
    b"PROPFIND /dav HTTP/1.1\r\n",
    b"\r\nPURGE /cache HTTP/1.1\r\n",
], ids=["crlf", "lowercase", "propfind", "purge"])
async def test_cl_te_smuggling_in_any_request_shape_never_reaches_the_origin(
        kind: str, start: bytes) -> None:
    async with setup(kind) as (p, name, rec):
        r, w = await connect(p.port(name))
        w.write(start + SMUGGLE)
        resp = await asyncio.wait_for(read_response(r), 5)
        assert resp.status == 400
        assert await asyncio.wait_for(closed_by_peer(r), 5)
        w.close()
        assert rec.connections == 0 and rec.received == b""  # not one byte, framed or not
        assert p.metric("tulle_proxy_protocol_errors_total", listener=name) == 1
        if kind == "auto":
            assert p.metric("tulle_proxy_protocol_detected_total", protocol="http1") == 1
            assert p.metric("tulle_proxy_tcp_connections_total") == 0
        await still_serves(p, name, rec)


@pytest.mark.parametrize("wire", [
    b"\r\nPROPFIND /dav HTTP/1.1\r\nHost: app\r\nDepth: 1\r\nContent-Length: 0\r\n\r\n",
    b"PURGE /cache HTTP/1.1\r\nHost: app\r\n\r\n",
], ids=["propfind", "purge"])
async def test_a_legitimate_uncommon_method_is_served_as_exactly_one_request(
        kind: str, wire: bytes) -> None:
    async with setup(kind) as (p, name, rec):
        r, w = await connect(p.port(name))
        w.write(wire)
        resp = await asyncio.wait_for(read_response(r), 5)
        w.close()
        assert resp.status == 200
        assert len(rec.requests) == 1 and rec.only_well_formed()
        method = wire.strip().split(b" ", 1)[0]
        assert rec.requests[0].startswith(method + b" /")
        assert b"x-forwarded-for" in rec.requests[0].lower()  # it went through the proxy's stack
        assert p.metric("tulle_proxy_requests_total", listener=name, response_code="200") == 1


async def test_a_silent_client_is_closed_at_the_header_timeout_and_the_origin_never_dialled(
) -> None:
    # The HTTP port: no sniffing, the header timeout from the first moment.  A client that
    # never sent a byte is closed without a response (Envoy and nginx do the same: a 408 to a
    # preconnected socket helps nobody); see docs/reference/interception.md.
    async with setup("inbound") as (p, name, rec):
        loop = asyncio.get_running_loop()
        start = loop.time()
        r, w = await connect(p.port(name))
        assert await asyncio.wait_for(r.read(), 5) == b""
        waited = loop.time() - start
        w.close()
        assert 0.15 <= waited < 2.0
        assert rec.connections == 0
        assert p.metric("tulle_proxy_tcp_connections_total") == 0
        await still_serves(p, name, rec)


@pytest.mark.parametrize("prefix", [b"GE", b"\r\nPROPF", b"get /slow HTTP/1.1\r\nHost: a"],
                         ids=["method", "crlf-token", "head"])
async def test_a_trickling_client_gets_408_and_the_origin_never_dialled(
        kind: str, prefix: bytes) -> None:
    async with setup(kind) as (p, name, rec):
        loop = asyncio.get_running_loop()
        start = loop.time()
        r, w = await connect(p.port(name))
        for b in prefix:  # a byte every 10 ms, then nothing
            w.write(bytes([b]))
            await asyncio.sleep(0.01)
        if prefix.startswith(b"get "):  # a whole (bad) request-line: the parser, not the timer
            resp = await asyncio.wait_for(read_response(r), 5)
            assert resp.status == 400
        else:
            resp = await asyncio.wait_for(read_response(r), 5)
            assert resp.status == 408
            assert p.metric("tulle_proxy_protocol_errors_total", kind="header_timeout") == 1
            assert loop.time() - start >= 0.15
        assert await asyncio.wait_for(closed_by_peer(r), 5)
        w.close()
        assert rec.connections == 0
        assert p.metric("tulle_proxy_tcp_connections_total") == 0
        if kind == "auto":
            detected = "http1" if prefix.startswith(b"get ") else "partial"
            assert p.metric("tulle_proxy_protocol_detected_total", protocol=detected) == 1
        await still_serves(p, name, rec)


async def test_a_half_close_mid_prefix_goes_to_http_not_to_the_origin() -> None:
    async with setup("auto") as (p, name, rec):
        r, w = await connect(p.port(name))
        w.write(b"\r\nPROP")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b""  # HTTP/1 closes a cut-short head
        w.close()
        assert rec.connections == 0
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="partial") == 1
        assert p.metric("tulle_proxy_tcp_connections_total") == 0
        await still_serves(p, name, rec)


async def test_a_silent_client_on_an_http_only_auto_listener_is_closed() -> None:
    async with recording_origin() as rec:
        cfg, name = auto_config(rec.port, cluster=False)
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port(name))
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            assert rec.connections == 0
            assert p.metric("tulle_proxy_protocol_detected_total", protocol="timeout") == 1
            assert p.metric("tulle_proxy_tcp_connections_total") == 0
            await still_serves(p, name, rec)


async def test_a_silent_client_on_an_auto_port_is_relayed_but_not_forever() -> None:
    # An undescribed port may carry a server-first protocol: after the detect timeout the
    # silent client is relayed (the greeting could flow), and the relay's idle timeout ends it.
    async with setup("auto") as (p, name, rec):
        r, w = await connect(p.port(name))
        assert await asyncio.wait_for(r.read(), 5) == b""  # closed by the idle timeout
        w.close()
        await asyncio.wait_for(rec.closed.wait(), 5)  # the origin's side was closed too
        assert rec.connections == 1 and rec.received == b""
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="timeout") == 1
        assert p.metric("tulle_proxy_tcp_idle_timeouts_total", listener=name) == 1
        await still_serves(p, name, rec)


async def test_part_of_the_h2_preface_then_silence_meets_the_h2_header_timeout() -> None:
    async with setup("auto") as (p, name, rec):
        loop = asyncio.get_running_loop()
        start = loop.time()
        r, w = await connect(p.port(name))
        w.write(b"PRI * HTTP/2.0\r\n")
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(r.read(), 5)  # its SETTINGS / GOAWAY frames, then EOF
        assert r.at_eof() or r.exception() is not None
        w.close()
        assert loop.time() - start >= 0.15
        assert rec.connections == 0
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="partial") == 1
        assert p.metric("tulle_proxy_tcp_connections_total") == 0
