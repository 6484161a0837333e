"""A real proxy's agent against a *newer* control plane, played by a raw stream server: a config
section the proxy cannot take is a NACK with its path, the stream stays up (no reconnect) and
the last good config keeps serving; a section marked optional is dropped and the config taken."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
from tests.support.proxy import free_port

from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import (
    Ack,
    FrameDecoder,
    Hello,
    Message,
    Nack,
    Pong,
    WorkloadInfo,
)


def config(version: str, listen: int, upstream: int, prefix: str = "/") -> dict[str, Any]:
    doc = msgspec.to_builtins(validate({
        "version": version, "admin": {"port": 0},
        "listeners": [{"name": "in", "port": listen, "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "app",
                      "endpoints": [{"address": "127.0.0.1", "port": upstream}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"value": prefix}}], "backends": [{"cluster": "app"}]}]}]}],
    }))
    assert isinstance(doc, dict)
    return doc


def frame(msg: dict[str, Any]) -> bytes:
    body = msgspec.json.encode(msg)
    return len(body).to_bytes(4, "big") + body


class NewerControlPlane:
    """Accepts proxies, records every message they send, sends whatever frames a test writes."""

    def __init__(self) -> None:
        self.connections = 0
        self.hellos: list[Hello] = []
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writer = writer
        dec = FrameDecoder()
        while data := await reader.read(65536):
            for msg in dec.feed(data):
                if isinstance(msg, Hello):
                    self.hellos.append(msg)
                    self.connected.set()
                else:
                    await self.inbox.put(msg)

    async def send(self, doc: dict[str, Any]) -> Message:
        """Send one frame, return the proxy's answer."""
        assert self.writer is not None
        self.writer.write(frame(doc))
        async with asyncio.timeout(5):
            return await self.inbox.get()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_an_unknown_section_is_nacked_with_its_path_and_the_stream_stays_up(
        origin: int) -> None:
    listen = free_port()
    cp = NewerControlPlane()
    srv = await asyncio.start_server(cp.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    proxy = ProxyServer()
    agent = Agent(proxy, [("127.0.0.1", port)], WorkloadInfo(name="web-0", namespace="shop"),
                  backoff_initial=0.01, backoff_max=0.05)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(5):
            await cp.connected.wait()
        (hello,) = cp.hellos
        assert hello.protocol == 2 and hello.features == list(SUPPORTED)
        assert hello.api_versions == ["proxy.tulle.dev/v1alpha1"]

        ok = await cp.send({"type": "snapshot", "version": "v1",
                            "config": config("v1", listen, origin)})
        assert ok == Ack(version="v1")
        assert (await get(f"http://127.0.0.1:{listen}/echo"))[0] == 200

        # A newer control plane's section this proxy does not know: NACK with the path.
        v2 = config("v2", listen, origin, prefix="/only")
        v2["settings"]["retry_budget"] = {"percent": 20}
        v2["listeners"][0]["quic"] = []
        nack = await cp.send({"type": "snapshot", "version": "v2", "config": v2})
        assert isinstance(nack, Nack) and nack.version == "v2"
        assert nack.paths == ["settings.retry_budget", "listeners[0].quic"]
        assert "settings.retry_budget: unknown field" in nack.reason

        # The same in a delta: the resource is named.
        delta = {"version": "v3", "base_version": "v1", "listeners": {"upsert": [
            dict(config("v3", listen, origin, prefix="/only")["listeners"][0], zone="a")]}}
        nack = await cp.send({"type": "delta", "delta": delta})
        assert isinstance(nack, Nack) and nack.version == "v3"
        assert nack.paths == ["listeners[name=in].zone"]

        # The stream is still up (same connection answers a ping) and v1 still serves.
        assert await cp.send({"type": "ping"}) == Pong()
        assert cp.connections == 1
        assert proxy.config is not None and proxy.config.version == "v1"
        status, _ = await get(f"http://127.0.0.1:{listen}/echo")
        assert status == 200  # v2's /only route never took effect

        # Marked optional by the control plane: dropped, recorded, and the config is taken.
        ok = await cp.send({"type": "snapshot", "version": "v4", "config": v2,
                            "optional": ["settings.retry_budget", "listeners[].quic"]})
        assert ok == Ack(version="v4")
        assert agent.last_ignored == ["settings.retry_budget", "listeners[0].quic"]
        assert "no route" in (await get(f"http://127.0.0.1:{listen}/echo"))[1]
        assert cp.connections == 1
    finally:
        agent.stop()
        task.cancel()
        await proxy.close()
        srv.close()


async def test_a_tls_setting_naming_a_missing_identity_is_nacked_with_its_path(
        origin: int) -> None:
    listen = free_port()
    cp = NewerControlPlane()
    srv = await asyncio.start_server(cp.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    proxy = ProxyServer()
    agent = Agent(proxy, [("127.0.0.1", port)], WorkloadInfo(name="web-0", namespace="shop"),
                  backoff_initial=0.01, backoff_max=0.05)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(5):
            await cp.connected.wait()
        assert await cp.send({"type": "snapshot", "version": "v1",
                              "config": config("v1", listen, origin)}) == Ack(version="v1")
        v2 = config("v2", listen, origin)
        v2["listeners"][0]["filter_chains"] = [{
            "name": "mtls", "match": {"transport": "tls"}, "route_table": "rt",
            "tls": {"identity": "spiffe-web", "trust_bundle": "mesh"}}]
        nack = await cp.send({"type": "snapshot", "version": "v2", "config": v2})
        assert isinstance(nack, Nack) and nack.version == "v2"
        assert nack.paths == ["listeners[0].filter_chains[0].tls.identity",
                              "listeners[0].filter_chains[0].tls.trust_bundle"]
        assert "no identity named 'spiffe-web'" in nack.reason
        assert await cp.send({"type": "ping"}) == Pong()  # the stream stays up
        assert proxy.config is not None and proxy.config.version == "v1"
    finally:
        agent.stop()
        task.cancel()
        await proxy.close()
        srv.close()
