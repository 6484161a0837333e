"""The proxy stream holds anonymous connections to little: a small frame before `hello`, a
deadline to say it, and a cap on connections -- against a real control-plane process, with raw
sockets.  (The attack: three anonymous connections announcing 64 MiB frames grew the control
plane by 185 MB.)

The stream is TLS (ADR 0034): the caps hold on raw TCP connections (counted before the
handshake, which shares the hello deadline); what is sent before a hello is sent over a
verified TLS stream (`tls`), as a proxy would.

Each test asserts what the peer saw (the connection closed, and how soon), that an honest
proxy is still served, and the counter (`stream` in GET /api/v1/proxies) that counted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from pathlib import Path
from typing import Any

import aiohttp
from tests.support.controlplane import (
    ControlPlaneProcess,
    auth,
    control_plane_process,
    eventually,
    open_stream,
    subscribe,
)

from tulle.proxyconfig.stream import Hello, WorkloadInfo, encode


async def stream_status(cp: ControlPlaneProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=auth(cp.api)) as s, \
            s.get(f"{cp.api}/api/v1/proxies") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
    return body


async def closed_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes (EOF or reset); fails if it stays open `timeout`s."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await loop.sock_recv(sock, 65536)
            except ConnectionError:
                break
            if not data:
                break
    return loop.time() - start


async def tls(cp: ControlPlaneProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await open_stream(cp.stream_port)


async def stream_closed_within(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the peer closes a TLS stream (EOF or reset)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await reader.read(65536):
                    break
            except (ConnectionError, OSError):
                break
    return loop.time() - start


def raw(cp: ControlPlaneProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", cp.stream_port))
    sock.setblocking(False)
    return sock


async def honest_proxy_connects(cp: ControlPlaneProcess, name: str) -> Any:
    proxy = await subscribe([cp.stream_port], WorkloadInfo(name=name, namespace="shop",
                                                           address="127.0.0.1"))

    async def connected() -> bool:
        items = (await stream_status(cp))["items"]
        return any(p["name"] == name and p["connected"] for p in items)

    try:
        await eventually(connected, timeout=10)
    except BaseException:
        await proxy.stop()
        raise
    return proxy


async def test_a_huge_frame_before_hello_is_refused_without_buffering(tmp_path: Path) -> None:
    async with control_plane_process("memory", tmp_path) as cp:
        before = cp.rss_kib()
        sent = []
        for _ in range(3):
            reader, writer = await tls(cp)
            try:
                writer.write((64 << 20).to_bytes(4, "big"))  # a 64 MiB frame
                total = 0
                with contextlib.suppress(ConnectionError):
                    for _ in range(128):  # then up to 8 MiB of it
                        writer.write(b"x" * 65536)
                        await writer.drain()
                        total += 65536
                sent.append(total)
                assert await stream_closed_within(reader, 5) < 5
            finally:
                writer.transport.abort()
        grown_mib = (cp.rss_kib() - before) / 1024
        assert grown_mib < 8, f"RSS grew {grown_mib:.1f} MiB (the peers got {sent} bytes in)"
        assert (await stream_status(cp))["stream"]["badHellos"] == 3
        # Logged once (warnings are throttled, a flood is not a log flood), with the reason.
        (line,) = [ln for ln in cp.log().splitlines() if "closed before a valid hello" in ln]
        assert "exceeds the 65536 byte limit" in line
        proxy = await honest_proxy_connects(cp, "web-0")
        await proxy.stop()


async def test_a_connection_that_does_not_say_hello_is_dropped(tmp_path: Path) -> None:
    async with control_plane_process("memory", tmp_path, "--stream-hello-timeout", "0.5") as cp:
        reader, trickle = await tls(cp)
        silent, quiet = raw(cp), raw(cp)  # no TLS handshake / TLS but no hello
        quiet_r, quiet_w = await tls(cp)
        try:
            hello = encode(Hello(workload=WorkloadInfo(name="slow", namespace="shop")))
            trickle.write(hello[:5])  # a hello started, never finished
            took = await closed_within(silent, 5)
            assert 0.4 < took < 3
            assert await stream_closed_within(reader, 3) < 3
            assert await stream_closed_within(quiet_r, 3) < 3
        finally:
            silent.close()
            quiet.close()
            trickle.transport.abort()
            quiet_w.transport.abort()
        stream = (await stream_status(cp))["stream"]
        assert stream["helloTimeouts"] == 2, stream
        assert stream["tlsHandshakeFailures"] == 2, stream  # the raw ones: no handshake
        proxy = await honest_proxy_connects(cp, "web-0")  # says hello at once: served
        await proxy.stop()


async def test_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    async with control_plane_process("memory", tmp_path, "--stream-max-connections", "3",
                                     "--stream-hello-timeout", "30") as cp:
        proxy = await honest_proxy_connects(cp, "web-0")
        held = [raw(cp), raw(cp)]  # with the proxy: 3 of 3
        try:
            await eventually(lambda: _connections(cp, 3), timeout=5)
            extra = raw(cp)
            try:
                assert await closed_within(extra, 2) < 1
            finally:
                extra.close()
            status = await stream_status(cp)
            assert status["stream"]["refusedConnections"] == 1
            assert status["stream"]["connections"] == 3
            assert [p["connected"] for p in status["items"] if p["name"] == "web-0"] == [True]
            assert "refused, over --stream-max-connections: 1 connection(s)" in cp.log()
        finally:
            for s in held:
                s.close()
        await eventually(lambda: _connections(cp, 1), timeout=5)
        second = await honest_proxy_connects(cp, "web-1")  # room again: a proxy gets in
        await second.stop()
        await proxy.stop()


async def _connections(cp: ControlPlaneProcess, n: int) -> bool:
    return bool((await stream_status(cp))["stream"]["connections"] == n)


async def test_anonymous_connections_cannot_exhaust_the_control_planes_descriptors(
        tmp_path: Path) -> None:
    """With the soft RLIMIT_NOFILE at 256 (systemd's default is 1024, below the default cap),
    300 anonymous stream connections held for the hello timeout must leave the REST API and
    an honest proxy served: the stream refuses the excess, it does not take every
    descriptor."""
    async with control_plane_process("memory", tmp_path) as cp:
        hard = resource.prlimit(cp.pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(cp.pid, resource.RLIMIT_NOFILE, (256, hard))
        socks = []
        try:
            for _ in range(300):
                socks.append(raw(cp))
            await asyncio.sleep(0.3)  # let it accept what it can
            async with asyncio.timeout(3):
                status = await stream_status(cp)
            assert status["stream"]["refusedConnections"] > 0, status["stream"]
            # Held to a quarter of the lowered limit before hello, half of it in all.
            assert status["stream"]["maxPendingHellos"] == 64, status["stream"]
            assert status["stream"]["maxConnections"] == 128, status["stream"]
            assert status["stream"]["pendingHellos"] == 64, status["stream"]
            assert status["stream"]["refusedPendingHellos"] == 300 - 64, status["stream"]
            proxy = await honest_proxy_connects(cp, "honest")
            await proxy.stop()
            assert "with the soft RLIMIT_NOFILE at 256, at most 128 connections" in cp.log()
        finally:
            for s in socks:
                s.close()


async def test_a_connection_closed_before_hello_is_a_disconnect_not_a_bad_hello(
        tmp_path: Path) -> None:
    """A peer that connects and closes without a frame (a port probe, a proxy giving up) is
    counted as a disconnect; `badHellos` stays for first frames that are wrong."""
    async with control_plane_process("memory", tmp_path) as cp:
        for _ in range(2):
            raw(cp).close()
        await eventually(lambda: _disconnects(cp, 2), timeout=5)
        stream = (await stream_status(cp))["stream"]
        assert stream["badHellos"] == 0, stream
        assert stream["pendingHellos"] == 0, stream
        assert "closed before a valid hello" not in cp.log()
        proxy = await honest_proxy_connects(cp, "web-0")
        await proxy.stop()


async def _disconnects(cp: ControlPlaneProcess, n: int) -> bool:
    return bool((await stream_status(cp))["stream"]["disconnectsBeforeHello"] == n)
