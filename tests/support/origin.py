"""Real HTTP/1.1 origin servers for tests (aiohttp), with a few useful endpoints.

    /echo        echoes method, path, headers (JSON) and body length
    /bytes/N     N bytes of body (streamed in 64 KiB pieces)
    /sink        reads the whole request body, answers with its length and sha256
    /delay/MS    answers after MS milliseconds
    /status/N    answers with status N
    /chunked     a chunked response of 3 pieces
    /ws          WebSocket echo
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method, "path": request.path_qs,
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body_len": len(body), "version": f"{request.version.major}.{request.version.minor}",
    })


async def _bytes(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    resp = web.StreamResponse()
    resp.content_length = n
    await resp.prepare(request)
    piece = b"x" * 65536
    left = n
    while left > 0:
        take = min(left, len(piece))
        await resp.write(piece[:take])
        left -= take
    await resp.write_eof()
    return resp


async def _sink(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    total = 0
    async for chunk in request.content.iter_chunked(65536):
        h.update(chunk)
        total += len(chunk)
    return web.json_response({"len": total, "sha256": h.hexdigest()})


async def _delay(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)
    return web.Response(text="late\n")


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["n"]), text="status\n")


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"one,", b"two,", b"three"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str("echo:" + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def make_app() -> web.Application:
    app = web.Application(client_max_size=2**40)
    app.router.add_route("*", "/echo", _echo)
    app.router.add_route("*", "/echo/{tail:.*}", _echo)
    app.router.add_get("/bytes/{n:\\d+}", _bytes)
    app.router.add_route("*", "/sink", _sink)
    app.router.add_get("/delay/{ms:\\d+}", _delay)
    app.router.add_route("*", "/status/{n:\\d+}", _status)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/ws", _ws)
    return app


@contextlib.asynccontextmanager
async def running_origin() -> AsyncIterator[int]:
    """Start the origin on a free loopback port; yields the port."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield int(port)
    finally:
        await runner.cleanup()
