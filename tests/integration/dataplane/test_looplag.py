"""A real proxy's /metrics carries the event loop's lag: a pause of the proxy's loop shows in
`tulle_proxy_event_loop_lag_milliseconds`, measured by the deadline sweep's tick (ADR 0086)."""

from __future__ import annotations

import asyncio
import re
import time

from tests.support.proxy import running_proxy, simple_config
from tests.support.subproc import http_get

from tulle.net.ports import unused_port

FAMILY = "tulle_proxy_event_loop_lag_milliseconds"


def buckets(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(FAMILY + r'_bucket\{le="([^"]+)"\} (\d+)', text)}


async def test_a_pause_of_the_proxys_loop_shows_on_metrics() -> None:
    # A header timeout of 400 ms makes the sweep tick every 100 ms (a quarter of it).
    cfg = simple_config(unused_port(), settings={"header_timeout_ms": 400})
    async with running_proxy(cfg, admin=True) as p:
        await asyncio.sleep(0.35)  # a few ticks on an idle loop
        status, body = await http_get(p.admin_port, "/metrics")
        assert status == 200
        assert f"# TYPE {FAMILY} histogram" in body.decode()
        before = buckets(body.decode())
        assert before["+Inf"] >= 2
        time.sleep(0.5)  # the proxy's loop (this test's) held for 500 ms: a tick due inside
        await asyncio.sleep(0.25)
        status, body = await http_get(p.admin_port, "/metrics")
        after = buckets(body.decode())
        late = after["+Inf"] - after["250"]
        assert late >= 1 and late > before["+Inf"] - before["250"]  # a tick ran > 250 ms late
        assert after["+Inf"] > before["+Inf"]
