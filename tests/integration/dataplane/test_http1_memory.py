"""Memory stays bounded under a flood of oversized heads (issue 6, item 6, HTTP/1 part).

Heads rejected with 431 used to live on in reference cycles until the cyclic collector ran:
84 MB of 10,000-header heads in 5 s took a proxy from 53 to 423 MB.  A real proxy process here
gets ~10,000-header heads from several connections for about two seconds; its resident memory
must stay within twice its idle size during the flood and come back near idle afterwards, every
head must be answered 431 (and counted), and the listener must still serve.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.origin import running_origin
from tests.support.proxy import simple_config
from tests.support.rawservers import connect, read_response
from tests.support.subproc import http_get, proxy_process

HEAD = (b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(10_000)) + b"\r\n")
CONNECTIONS = 4
SECONDS = 2.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def flood(port: int, until: float) -> int:
    """Send oversized heads one connection after another until `until`; count the 431s."""
    loop = asyncio.get_running_loop()
    answered = 0
    for _ in range(5000):  # bounded, whatever the clock does
        if loop.time() > until:
            break
        r, w = await connect(port)
        w.write(HEAD)
        try:
            resp = await asyncio.wait_for(read_response(r), 5.0)
            assert resp.status == 431
            answered += 1
        except ConnectionError:
            pass  # the proxy may close before it has read the whole head: still refused
        finally:
            w.close()
    return answered


async def test_flood_of_oversized_heads_keeps_rss_bounded(tmp_path: Path) -> None:
    async with running_origin() as origin, proxy_process(simple_config(origin), tmp_path) as p:
        port = p.port()
        for _ in range(20):  # warm up the normal path first: its allocations are idle too
            assert (await http_get(port, "/echo"))[0] == 200
        idle = rss_kib(p.pid)
        loop = asyncio.get_running_loop()
        until = loop.time() + SECONDS
        peak = idle
        tasks = [asyncio.ensure_future(flood(port, until)) for _ in range(CONNECTIONS)]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_kib(p.pid))
            await asyncio.sleep(0.05)
        answered = sum(t.result() for t in tasks)
        await asyncio.sleep(0.3)
        after = rss_kib(p.pid)
        assert answered > 20, answered
        assert peak < 2 * idle, f"idle {idle} KiB, peak {peak} KiB during the flood"
        assert after < idle * 1.25 + 4096, f"idle {idle} KiB, {after} KiB afterwards"
        assert await p.metric("tulle_proxy_protocol_errors_total",
                              kind="header_too_large") >= answered
        assert (await http_get(port, "/echo"))[0] == 200  # still serves
