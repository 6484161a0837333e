"""The admin endpoint (loopback, port 15000): /ready, /metrics, /config_dump, /clusters.

Served by the same HTTP/1 codec as traffic, without routing: a handful of GET paths answered
from the proxy's own state.  Never exposed beyond loopback by default; it reveals the whole
configuration.

    /ready        200 when a config is in force and the proxy is not draining, else 503
    /metrics      Prometheus text exposition (version 0.0.4), or OpenMetrics 1.0.0 when the
                  `Accept` header prefers `application/openmetrics-text`
    /config_dump  the config in force, canonical JSON
    /clusters     clusters, endpoints, pool and connection counts, JSON

Other paths get 404; other methods than GET and HEAD on these paths get 405.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from tulle.dataplane.exchange import Headers, RequestHead
from tulle.dataplane.protocols.http1 import ProtocolError, RequestCodec, local_response
from tulle.proxyconfig.load import dump

if TYPE_CHECKING:
    from tulle.dataplane.server import ProxyServer

TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = b"application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept: bytes) -> bool:
    """Whether an `Accept` header prefers OpenMetrics to Prometheus text: the media type with
    the highest `q` wins, Prometheus text on a tie or when neither is named (what a scraper
    that does not negotiate, or a person with curl, reads)."""
    best_om = best_text = -1.0
    for item in accept.split(b","):
        parts = item.split(b";")
        media = parts[0].strip().lower()
        q = 1.0
        for p in parts[1:]:
            k, _, v = p.strip().partition(b"=")
            if k.strip().lower() == b"q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        if media == b"application/openmetrics-text":
            best_om = max(best_om, q)
        elif media in (b"text/plain", b"text/*", b"*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om > best_text


def _response(status: int, body: bytes, ctype: bytes, *, head_only: bool = False,
              close: bool = False, extra: bytes = b"") -> bytes:
    from http import HTTPStatus  # the admin port's own imports wait for its first request

    reason = HTTPStatus(status).phrase.encode()
    conn = b"connection: close\r\n" if close else b""
    return (b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
            b"cache-control: no-store\r\n%b%b\r\n%b" % (
                status, reason, ctype, len(body), conn, extra, b"" if head_only else body))


def _count(pool: object, attr: str) -> int:
    value = getattr(pool, attr, ())
    return value if isinstance(value, int) else len(value)


def clusters_view(server: ProxyServer) -> list[dict[str, object]]:
    """Every cluster in force with its endpoints and connection counts."""
    m = server.metrics
    out: list[dict[str, object]] = []
    for name, c in sorted(server.clusters.clusters.items()):
        eps = []
        for e in c.endpoints:
            pool = c.pools.get(e.key)
            idle, busy = _count(pool, "idle"), _count(pool, "busy")
            eps.append({
                "address": e.key, "weight": e.weight, "zone": e.zone, "healthy": e.healthy,
                "health": server.health.why(name, e.key),
                "requests_active": e.active,
                # What peak-EWMA balances on (ADR 0038): the latency estimate as last sampled.
                "latency_ewma_ms": round(e.ewma * 1000, 3),
                # HTTP/1 pools: idle and busy; multiplexed (HTTP/2) pools: `all` connections.
                "connections_open": _count(pool, "all") if hasattr(pool, "all") else idle + busy,
                "connections_idle": idle,
                "connections_busy": busy,
            })
        out.append({
            "name": name, "protocol": c.protocol, "lb_policy": c.cfg.lb_policy,
            "connections_active": m.upstream_connections_active.labels(name).value,
            "connections_total": m.upstream_connections_total.labels(name).value,
            "connect_failures": m.upstream_connect_failures.labels(name).value,
            "endpoints": eps,
        })
    return out


class AdminProtocol(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.codec = RequestCodec(self, 16384)
        self.transport: asyncio.Transport | None = None
        self.accept = b""
        """The `Accept` header of the request being answered (content negotiation)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.codec.close()  # breaks codec <-> parser <-> self (no work for the cyclic GC)

    def data_received(self, data: bytes) -> None:
        try:
            self.codec.feed(data)
        except (ProtocolError, ValueError) as exc:
            if self.transport is not None:
                status = exc.status if isinstance(exc, ProtocolError) else 400
                self.transport.write(local_response(status, b"bad request\n", close=True))
                self.transport.close()

    def on_request_head(self, head: RequestHead, has_body: bool, keep_alive: bool,
                        expect_continue: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        path = head.path.split(b"?", 1)[0]
        handler = self.ROUTES.get(path)
        close = not keep_alive
        if handler is None:
            body = b"admin endpoints: " + b" ".join(sorted(self.ROUTES)) + b"\n"
            t.write(_response(404, body, TEXT, close=close))
        elif head.method not in (b"GET", b"HEAD"):
            t.write(_response(405, b"method not allowed\n", TEXT, close=close,
                              extra=b"allow: GET, HEAD\r\n"))
        else:
            self.accept = next((v for n, v in head.headers if n == b"accept"), b"")
            status, body, ctype = handler(self)
            t.write(_response(status, body, ctype, close=close, head_only=head.method == b"HEAD"))
        if close:
            t.close()

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: Headers | None) -> None:
        pass

    def ready(self) -> tuple[int, bytes, bytes]:
        s = self.server
        if s.config is None:
            return 503, b"NOT READY: no config in force\n", TEXT
        if s.draining:
            return 503, b"NOT READY: draining\n", TEXT
        return 200, b"READY\n", TEXT

    def metrics(self) -> tuple[int, bytes, bytes]:
        self.server.flush_telemetry()
        if wants_openmetrics(self.accept[:4096]):
            return 200, self.server.metrics.registry.render(True).encode(), OPENMETRICS
        return 200, self.server.metrics.registry.render().encode(), PROMETHEUS

    def config_dump(self) -> tuple[int, bytes, bytes]:
        cfg = self.server.config
        return 200, (dump(cfg) + b"\n" if cfg is not None else b"{}\n"), JSON

    def clusters(self) -> tuple[int, bytes, bytes]:
        import json

        return 200, json.dumps(clusters_view(self.server), indent=2).encode() + b"\n", JSON

    ROUTES: dict[bytes, Callable[[AdminProtocol], tuple[int, bytes, bytes]]] = {
        b"/ready": ready, b"/metrics": metrics, b"/config_dump": config_dump,
        b"/clusters": clusters,
    }


def _numeric_family(address: str) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address)
        except OSError:
            continue
        return family
    return None


async def start_admin(server: ProxyServer, address: str, port: int) -> asyncio.AbstractServer:
    """Serve the admin endpoint; raises OSError when the address cannot be bound.

    A numeric address is bound here rather than by `create_server(host, port)`: uvloop resolves
    a host through libuv's thread pool (four threads) and the `idna` codec (unicodedata), about
    0.5 MB of resident memory for nothing.
    """
    loop = asyncio.get_running_loop()
    family = _numeric_family(address)
    if family is None:
        return await loop.create_server(lambda: AdminProtocol(server), address, port,
                                        reuse_address=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
        sock.setblocking(False)
        return await loop.create_server(lambda: AdminProtocol(server), sock=sock)
    except BaseException:
        sock.close()
        raise
