"""A *newer* control plane played by a raw stream server, and a real proxy's agent on it.

    async with agent_on_v1(origin) as a:   # v1 (one listener on a.listen -> origin) is acked
        nack = await a.cp.send({"type": "snapshot", "version": "v2", "config": v2})

The proxy and its agent are production code on loopback sockets; only the control plane's side
of the stream is the test's, so a test can send frames no real control plane would.  It speaks TLS
with a control-plane certificate from a test CA the agent trusts (ADR 0034)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from tests.support.ca import stream_tls
from tests.support.proxy import free_port
from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.stream import Ack, FrameDecoder, Hello, Message, WorkloadInfo


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
        self.ended = asyncio.Event()
        """Set when a proxy's stream ends (the proxy closed it or the test did)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writer = writer
        dec = FrameDecoder()
        try:
            while data := await reader.read(65536):
                for msg in dec.feed(data):
                    if isinstance(msg, Hello):
                        self.hellos.append(msg)
                        self.connected.set()
                    else:
                        await self.inbox.put(msg)
        finally:
            self.ended.set()

    async def send(self, doc: dict[str, Any]) -> Message:
        """Send one frame, return the proxy's answer."""
        assert self.writer is not None
        self.writer.write(frame(doc))
        async with asyncio.timeout(5):
            return await self.inbox.get()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


@dataclass
class AgentOnV1:
    cp: NewerControlPlane
    proxy: ProxyServer
    agent: Agent
    task: asyncio.Task[None]
    """`agent.run()`."""
    listen: int
    origin: int


@contextlib.asynccontextmanager
async def agent_on_v1(origin: int) -> AsyncIterator[AgentOnV1]:
    """A proxy's agent connected to a `NewerControlPlane`, with `config("v1", listen, origin)`
    sent and acked; the agent, proxy and server are stopped on the way out."""
    listen = free_port()
    cp = NewerControlPlane()
    tls, trust = stream_tls()
    srv = await asyncio.start_server(cp.serve, "127.0.0.1", 0, ssl=tls)
    proxy = ProxyServer()
    agent = Agent(proxy, [("127.0.0.1", srv.sockets[0].getsockname()[1])],
                  WorkloadInfo(name="web-0", namespace="shop"),
                  backoff_initial=0.01, backoff_max=0.05, trust=trust)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(5):
            await cp.connected.wait()
        assert await cp.send({"type": "snapshot", "version": "v1",
                              "config": config("v1", listen, origin)}) == Ack(version="v1")
        yield AgentOnV1(cp, proxy, agent, task, listen, origin)
    finally:
        agent.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await proxy.close()
        srv.close()
        await srv.wait_closed()
