"""Issue 10's scenario through a real proxy (real sockets, three controllable upstreams): one
endpoint turns slow (+50 ms); peak-EWMA moves most traffic off it and the run's p99 is lower
than round robin's in the same test.  Also: a hash policy keeps a user on one endpoint."""

from __future__ import annotations

import asyncio

from bench.slow_endpoint import setup, slow_endpoint_run

from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate


async def test_one_endpoint_turns_slow_peak_ewma_avoids_it_and_beats_round_robin() -> None:
    # 600 requests: until its first slow answer comes back (50 ms) nothing tells the slow
    # endpoint apart, so a few requests (one per client at most) still go there -- well under
    # 1% of the run, so they do not make its p99.
    ewma = await slow_endpoint_run("peak_ewma", requests=600)
    rr = await slow_endpoint_run("round_robin", requests=600)
    assert rr.slow_share > 0.3  # round robin keeps sending a third of the traffic there
    assert ewma.slow_share < 0.01  # peak-EWMA moved (almost) all of it away
    assert rr.p99_ms >= 50.0
    assert ewma.p99_ms < rr.p99_ms  # (no absolute bound: the machine is shared and busy)


async def _get(port: int, user: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: backend\r\nx-user: " + user + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    assert b" 200 " in head
    await reader.readexactly(2)
    writer.close()


async def test_maglev_on_a_header_keeps_each_user_on_one_endpoint() -> None:
    async with setup("round_robin") as (ups, _):
        server = ProxyServer()
        cfg = {"listeners": [{"name": "out", "port": 0, "route_table": "rt"}],
               "clusters": [{"name": "backend", "lb_policy": "maglev",
                             "lb": {"hash_policies": [{"type": "header", "name": "x-user"}]},
                             "endpoints": [{"address": "127.0.0.1", "port": p}
                                           for p in ups.ports]}],
               "route_tables": [{"name": "rt", "virtual_hosts": [
                   {"name": "any", "rules": [{"backends": [{"cluster": "backend"}]}]}]}]}
        await server.apply(validate(cfg))
        try:
            port = server.bound_port("out")
            where: dict[bytes, int] = {}
            for user in (b"alice", b"bob", b"carol", b"dave", b"erin", b"frank"):
                before = list(ups.served)
                for _ in range(5):  # a new connection each time: affinity is the key's
                    await _get(port, user)
                moved = [i for i, (a, b) in enumerate(zip(before, ups.served, strict=True)) if a != b]
                assert len(moved) == 1, (user, moved)
                where[user] = moved[0]
            assert len(set(where.values())) >= 2  # users spread over endpoints
        finally:
            await server.close()
