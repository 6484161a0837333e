"""A real OTLP/HTTP receiver for tests (aiohttp on 127.0.0.1), written on the OTLP protocol.

It accepts POST /v1/logs, /v1/traces and /v1/metrics with `application/x-protobuf` bodies,
decodes them with the real generated classes of opentelemetry-proto (so what the proxy's
hand-rolled encoder sends is read the way a collector reads it) and keeps each export in
`exports` (path, headers, decoded message), signalling `arrived` for tests that await it.
A POST to any other path is only recorded in `raw` and answered 200 (for tests of the
generic exporter).  A body that does not decode is answered 400, as a collector does.
`answers` scripts the next responses (status, headers, body), then it answers 200 with an
empty Export*ServiceResponse; `stall` makes it hold requests until released.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_REQUESTS: dict[str, tuple[Any, Any]] = {
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest,
                 logs_service_pb2.ExportLogsServiceResponse),
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                   trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse),
}


@dataclass
class Export:
    path: str
    headers: dict[str, str]
    message: Any


@dataclass
class OtlpReceiver:
    port: int = 0
    exports: list[Export] = field(default_factory=list)
    raw: list[tuple[str, bytes]] = field(default_factory=list)
    """Every request's path and body, decodable or not."""
    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    stall: asyncio.Event | None = None
    """When set to an unset Event, requests wait for it before being answered."""

    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Export]:
        """Wait until `count` exports have been decoded."""
        async with asyncio.timeout(timeout):
            while len(self.exports) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.exports

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append((request.path, body))
        if self.stall is not None:
            await self.stall.wait()
        if request.headers.get("content-type") != "application/x-protobuf":
            return web.Response(status=415)
        kinds = _REQUESTS.get(request.path)
        if kinds is None:
            self.exports.append(Export(request.path, dict(request.headers), None))
            self.arrived.set()
            if self.answers:
                status, headers, resp_body = self.answers.pop(0)
                return web.Response(status=status, headers=headers, body=resp_body)
            return web.Response(status=200)
        if self.answers:
            status, headers, resp_body = self.answers.pop(0)
            if status >= 300:
                self.arrived.set()
                return web.Response(status=status, headers=headers, body=resp_body)
        else:
            status, headers, resp_body = 200, {}, kinds[1]().SerializeToString()
        message = kinds[0]()
        try:
            message.ParseFromString(body)
        except DecodeError:
            return web.Response(status=400, text="undecodable body")
        self.exports.append(Export(request.path, dict(request.headers), message))
        self.arrived.set()
        return web.Response(status=status, headers=headers, body=resp_body,
                            content_type="application/x-protobuf")


@contextlib.asynccontextmanager
async def running_receiver(ssl_context: ssl.SSLContext | None = None
                           ) -> AsyncIterator[OtlpReceiver]:
    """`ssl_context`: serve HTTPS with it (OTLP/HTTP over TLS)."""
    receiver = OtlpReceiver(tls=ssl_context is not None)
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    receiver.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield receiver
    finally:
        if receiver.stall is not None:
            receiver.stall.set()
        await runner.cleanup()
