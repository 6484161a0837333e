"""A new connection's Python cost: one `Connection: close` request per connection, without
sockets, on an `http1` listener and on an `auto` one (protocol detection).

    .venv/bin/python -m bench.micro_connect [-n 2000] [--repeat 15] [--profile http1|auto]

Like `bench.micro_http1` (whose snapshot it builds), but each request comes on a fresh
in-memory transport: the driver is made by the listener's own protocol factory
(`listeners/factory.py`), so an `auto` listener runs its sniffing driver (`H1SniffDownstream`,
which stays the HTTP/1 driver: ADR 0073; before it, `DetectDownstream` and a hand-over to
`H1Downstream`), and the connection is closed after the response as the client asked.  The
difference between the two rows is what detection costs a connection whose first bytes come
with it.  Prints best-of-N CPU µs and function calls per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time

import bench.micro_http1 as micro
from tulle.dataplane.listeners.factory import protocol_factory
from tulle.dataplane.listeners.memory import MemoryTransport
from tulle.dataplane.upstream.http1 import H1Connection

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nConnection: close\r\n\r\n"


async def run(protocol: str, n: int, repeat: int, profile: cProfile.Profile | None) -> float:
    handle, pool = micro.build(protocol=protocol)
    make = protocol_factory(handle)
    up_t = MemoryTransport(keep=1 << 16)
    up = H1Connection(pool)
    up.connection_made(up_t)  # type: ignore[arg-type]
    pool.idle.append(up)
    resp = micro.NGINX_HEAD + micro.BODY

    answered: list[MemoryTransport] = []

    def one() -> None:
        t = MemoryTransport(keep=1 << 12)
        proto = make()
        t.protocol = proto
        proto.connection_made(t)  # type: ignore[arg-type]
        proto.data_received(REQUEST)  # type: ignore[attr-defined]
        up.data_received(resp)
        answered.append(t)

    async def turn_end() -> None:
        """The turn's writes leave (the responses and their FINs, ADR 0069); then each client,
        having read its response, closes (or the linger ends)."""
        await asyncio.sleep(0)
        for t in answered:
            t.close()
        answered.clear()

    one()
    first = answered[0]
    await turn_end()
    assert first.writes and first.eof, "the response and its FIN were not written"
    assert pool.idle == [up] and not handle.connections, "a connection was left behind"
    for _ in range(500):
        one()
    await turn_end()
    best = float("inf")
    for _ in range(repeat):
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        for i in range(n):
            one()
            if i % micro.BATCH == 0:
                await turn_end()
        await turn_end()
        best = min(best, time.process_time() - t0)
        if profile is not None:
            profile.disable()
    assert not handle.connections
    return best / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--profile", default="", help="cProfile one listener protocol")
    args = ap.parse_args(argv)
    import uvloop

    if args.profile:
        prof = cProfile.Profile()
        uvloop.run(run(args.profile, args.n, 1, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    print(f"CPU µs per connection (one Connection: close request), best of {args.repeat} x "
          f"{args.n}; function calls per connection (Python {sys.version.split()[0]})")
    for protocol in ("http1", "auto"):
        us = uvloop.run(run(protocol, args.n, args.repeat, None))
        prof = cProfile.Profile()
        uvloop.run(run(protocol, 1000, 1, prof))
        calls = sum(nc for (_, nc, _, _, _) in pstats.Stats(prof).stats.values()) / 1000  # type: ignore[attr-defined]
        print(f"  {protocol:<6} {us:7.1f} µs {calls:6.1f} calls")


if __name__ == "__main__":
    main()
