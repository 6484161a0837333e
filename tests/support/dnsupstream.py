"""A small real upstream DNS server on loopback (UDP and TCP, one port) that records the
exact bytes it receives, for the proxy's forwarding tests.

Answers are built with dnspython from the query it got: `example.org` A 192.0.2.7 (with RA
and AD set, so a relay that rewrote flags would show), `big.example.org` over UDP answered
TC with no records (over TCP: 40 A records), `slow.example.org` never answered, and anything
else NXDOMAIN.  With `wrong_id_first`, every UDP answer is preceded by one with another ID
(an off-path spoof the proxy must skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rrset


@dataclass
class Upstream:
    port: int = 0
    received_udp: list[bytes] = field(default_factory=list)
    received_tcp: list[bytes] = field(default_factory=list)
    wrong_id_first: bool = False

    def reply(self, data: bytes, tcp: bool) -> bytes | None:
        q = dns.message.from_wire(data)
        name = q.question[0].name.to_text().lower()
        if name == "slow.example.org.":
            return None
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA | dns.flags.AD
        if name == "example.org.":
            r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A",
                                                "192.0.2.7"))
        elif name == "big.example.org.":
            if tcp:
                r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A",
                                                    *[f"192.0.2.{i}" for i in range(1, 41)]))
            else:
                r.flags |= dns.flags.TC
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.t: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.up.received_udp.append(data)
        out = self.up.reply(data, tcp=False)
        if out is not None and self.t is not None:
            if self.up.wrong_id_first:
                self.t.sendto(bytes([data[0] ^ 0xFF, data[1]]) + out[2:], addr)
            self.t.sendto(out, addr)


async def _tcp(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            n = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(n)
            up.received_tcp.append(data)
            out = up.reply(data, tcp=True)
            if out is not None:
                writer.write(len(out).to_bytes(2, "big") + out)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def upstream_dns(wrong_id_first: bool = False) -> AsyncIterator[Upstream]:
    up = Upstream(wrong_id_first=wrong_id_first)
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(lambda r, w: _tcp(up, r, w), "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usock.bind(("127.0.0.1", up.port))
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(up), sock=usock)
    try:
        yield up
    finally:
        transport.close()
        server.close()
