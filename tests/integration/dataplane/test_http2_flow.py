"""HTTP/2 flow control through the proxy: large bodies both ways, and a slow upstream that must
throttle the client instead of filling the proxy's memory."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import running_proxy, simple_config

MIB = 1024 * 1024
BIG = 50 * MIB


@pytest.fixture(scope="module")
def big_body() -> bytes:
    return os.urandom(BIG)


def h2_config(port: int, cluster_protocol: str = "http2") -> dict[str, object]:
    return simple_config(port, protocol="http2", cluster_protocol=cluster_protocol)


@pytest.mark.timeout(120)
async def test_50_mib_both_ways_to_an_h2c_upstream(big_body: bytes) -> None:
    async with running_h2_origin() as (port, _), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        up = await c.request("POST", "/sink", body=big_body)
        assert up.status == 200
        assert up.json() == {"len": BIG, "sha256": hashlib.sha256(big_body).hexdigest()}
        down = await c.request("GET", f"/bytes/{BIG}")
        assert down.status == 200 and down.reset_code is None
        assert len(down.body) == BIG
        c.close()


@pytest.mark.timeout(120)
async def test_50_mib_both_ways_to_an_http1_origin(origin: int, big_body: bytes) -> None:
    async with running_proxy(h2_config(origin, "http1")) as p:
        c = await H2Client.connect(p.port())
        # No content-length: the HTTP/1 upstream gets the body chunked.
        up = await c.request("POST", "/sink", body=big_body)
        assert up.status == 200
        assert up.json() == {"len": BIG, "sha256": hashlib.sha256(big_body).hexdigest()}
        down = await c.request("GET", f"/bytes/{BIG}")
        assert down.status == 200 and len(down.body) == BIG
        c.close()


async def test_a_slow_upstream_throttles_the_client() -> None:
    async with running_h2_origin() as (port, origin), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        sid, r = c.start("POST", "/hold", end_stream=False)
        sender = asyncio.create_task(c.send_body(sid, b"h" * (20 * MIB)))
        # The origin acknowledges nothing: it holds one window (64 KiB) and the proxy stops.
        for _ in range(500):
            if origin.held_bytes >= 65_535:
                break
            await asyncio.sleep(0.01)
        assert origin.held_bytes == 65_535
        # Give the client every chance to push more; it must stall on its window.
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not sender.done()
        # One upstream window + the proxy's high-water queue + its downstream window, at most.
        assert c.sent[sid] < 2 * MIB, c.sent[sid]
        origin.release.set()
        await asyncio.wait_for(sender, 60)
        await asyncio.wait_for(r.done.wait(), 60)
        assert r.status == 200 and r.json()["len"] == 20 * MIB
        c.close()

