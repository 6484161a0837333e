"""Forwarding a query the mesh does not answer: to the upstream resolvers, relayed unchanged.

The client's bytes go upstream as they came (same ID, same flags, EDNS and all), and the first
reply that answers them (`same_question`: ID, QR, question) comes back byte for byte: the
client sees what it would have seen without the mesh, TC bit included.  UDP goes over a fresh
*connected* socket per query, so the kernel drops datagrams from any other address and the
source port is new each time; TCP opens one connection per query.  Each upstream is tried in
order for `upstream_timeout_ms`; when none answered, the caller answers SERVFAIL.
"""

from __future__ import annotations

import asyncio
import socket

from tulle.dataplane.protocols import dns as wire

MAX_REPLY = 65_535


async def _udp(loop: asyncio.AbstractEventLoop, data: bytes, addr: tuple[str, int],
               timeout: float) -> bytes | None:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(addr)
        await loop.sock_sendall(sock, data)
        async with asyncio.timeout(timeout):
            while True:  # bounded by the timeout: datagrams that do not answer are skipped
                reply = await loop.sock_recv(sock, MAX_REPLY)
                if wire.same_question(data, reply):
                    return reply
    except (TimeoutError, OSError):
        return None
    finally:
        sock.close()


async def _tcp(data: bytes, addr: tuple[str, int], timeout: float) -> bytes | None:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(addr[0], addr[1])
            writer.write(len(data).to_bytes(2, "big") + data)
            while True:  # bounded by the timeout
                n = int.from_bytes(await reader.readexactly(2), "big")
                reply = await reader.readexactly(n)
                if wire.same_question(data, reply):
                    return reply
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            writer.close()


async def forward(data: bytes, upstreams: tuple[tuple[str, int], ...], timeout: float,
                  tcp: bool) -> bytes | None:
    """The first upstream's answer to `data`, or None when none answered in time."""
    loop = asyncio.get_running_loop()
    for addr in upstreams:
        reply = await (_tcp(data, addr, timeout) if tcp else _udp(loop, data, addr, timeout))
        if reply is not None:
            return reply
    return None


def servfail(q: wire.Query) -> bytes:
    return wire.answer(q, wire.SERVFAIL, authoritative=False)
