"""The admin endpoint (loopback, port 15000): /ready, /metrics, /config_dump, /clusters.

Served by the same HTTP/1 codec as traffic, without routing: a handful of GET paths answered
from the proxy's own state.  Never exposed beyond loopback by default; it reveals the whole
configuration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.protocols.http1 import ProtocolError, RequestCodec, local_response
from tulle.proxyconfig.load import dump

if False:  # pragma: no cover - typing only, avoids an import cycle at run time
    from tulle.dataplane.server import ProxyServer


def _response(status: int, body: bytes, ctype: bytes) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %b\r\ncontent-length: %d\r\n\r\n%b" % (
        status, b"OK" if status == 200 else b"Error", ctype, len(body), body))


def clusters_view(server: ProxyServer) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, c in sorted(server.clusters.clusters.items()):
        eps = []
        for e in c.endpoints:
            pool = c.pools.get(e.key)
            eps.append({
                "address": e.key, "weight": e.weight, "healthy": e.healthy,
                "connections_idle": len(getattr(pool, "idle", ())),
                "connections_busy": len(getattr(pool, "busy", ())),
            })
        out.append({"name": name, "protocol": c.protocol, "lb_policy": c.cfg.lb_policy,
                    "endpoints": eps})
    return out


class AdminProtocol(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.codec = RequestCodec(self, 16384)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.codec.feed(data)
        except ProtocolError as exc:
            assert self.transport is not None
            self.transport.write(local_response(exc.status, exc.detail.encode(), close=True))
            self.transport.close()

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        path = head.path.split(b"?", 1)[0]
        handler: Callable[[], bytes] | None = self.ROUTES.get(path)
        assert self.transport is not None
        if head.method not in (b"GET", b"HEAD") or handler is None:
            body = b"admin endpoints: " + b" ".join(sorted(self.ROUTES)) + b"\n"
            self.transport.write(_response(404, body, b"text/plain"))
        else:
            self.transport.write(handler(self))  # type: ignore[call-arg]
        if not keep_alive:
            self.transport.close()

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: Headers | None) -> None:
        pass

    def ready(self) -> bytes:
        s = self.server
        if s.config is None or s.draining:
            return _response(503, b"NOT READY\n", b"text/plain")
        return _response(200, b"READY\n", b"text/plain")

    def metrics(self) -> bytes:
        return _response(200, self.server.metrics.registry.render().encode(),
                         b"text/plain; version=0.0.4; charset=utf-8")

    def config_dump(self) -> bytes:
        cfg = self.server.config
        body = dump(cfg) + b"\n" if cfg is not None else b"{}\n"
        return _response(200, body, b"application/json")

    def clusters(self) -> bytes:
        body = json.dumps(clusters_view(self.server), indent=2).encode() + b"\n"
        return _response(200, body, b"application/json")

    ROUTES: dict[bytes, Callable[..., bytes]] = {
        b"/ready": ready, b"/metrics": metrics, b"/config_dump": config_dump,
        b"/clusters": clusters,
    }


async def start_admin(server: ProxyServer, address: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: AdminProtocol(server), address, port,
                                    reuse_address=True)
