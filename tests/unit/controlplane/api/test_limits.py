"""The REST API bounds request bodies: a declared Content-Length over the bound is refused
before a byte of the body is sent, a chunked body as soon as it passes the bound, and the API
keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json

from tests.support.controlplane import apply, public_records, running_control_plane
from tests.support.resources import service

from tulle.controlplane.main import ControlPlane

LIMIT = 64 * 1024


def bounded_control_plane() -> contextlib.AbstractAsyncContextManager[ControlPlane]:
    return running_control_plane("memory", api_max_body_bytes=LIMIT)


async def exchange(port: int, head: bytes, body_chunks: list[bytes]) -> tuple[int, dict[str, str]]:
    """Send `head`, then the chunks while the server reads; (status, JSON body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


async def test_a_declared_body_over_the_bound_is_refused_unread() -> None:
    async with bounded_control_plane() as cp:
        head = (f"POST /api/v1/apply HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer {cp.admin_token}\r\n"
                f"content-length: {1 << 30}\r\n\r\n").encode()
        status, body = await exchange(cp.api_port, head, [])  # not one byte of the 1 GiB sent
        assert status == 413
        assert body["error"] == f"request body larger than {LIMIT} bytes"
        assert (await apply(cp.api_url, service("after")))[0] == 200


async def test_a_chunked_body_is_refused_once_it_passes_the_bound() -> None:
    async with bounded_control_plane() as cp:
        assert cp.store is not None
        head = (b"POST /api/v1/apply HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer " + cp.admin_token.encode() + b"\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        piece = b'{"documents": [' + b" " * 16_000
        chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n"] * 8  # ~128 KB in all
        status, body = await exchange(cp.api_port, head, chunks)
        assert status == 413, body
        # nothing reached the store: it holds only its CA and the first admin API token
        assert await public_records(cp.store) == []
        assert (await apply(cp.api_url, service("after")))[0] == 200
