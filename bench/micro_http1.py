"""The HTTP/1.1 proxy's Python cost per request, without sockets or a load generator.

    .venv/bin/python -m bench.micro_http1 [-n 3000] [--repeat 25] [--only get,post] [--profile get]
                                          [--filters] [--retry]

`make bench-quick` measures the proxy as a whole but needs an idle two-CPU machine and 45 s;
this feeds the same bytes through the same objects in one process in half a minute, so a
change to the codecs, the driver or the pool can be measured on a loaded laptop.  A listener
context, router and cluster are built exactly as a snapshot builds them (metrics on, request
ids generated, forwarding headers added); `H1Downstream` and `H1Connection` get in-memory
transports (`listeners/memory.py`) that keep what is written.  Each request is one downstream
read and one upstream read (head and body in one segment, as nginx sends a 1 KiB file); the
event loop runs once every `BATCH` requests so that work deferred with `call_soon` is paid for
too.

What it leaves out: the event loop and the socket calls (epoll, recv, send: about half of the
proxy's CPU under wrk) and connection set-up.  Numbers are best-of-`--repeat` CPU µs per
request (process time, so other jobs on a shared machine disturb them less than wall time;
many short repeats, because the best of them is what a quiet machine would show), next to
function calls per request, which no neighbour can move; compare times from the same machine
only.  Each scenario first checks the bytes the client and the origin see, so a faster but
wrong path cannot be measured.  `--filters` gives the route a request and a response header
modifier (`FILTERS`), the issue's "+10% at most" case; without it the route has no filters.
`--retry` gives the route a retry policy (`RETRY`; the cluster's retry budget is on): issue
10's "the budget costs < 3% on a healthy path".
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.routing_peers import tulle_routing_config
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.listeners.memory import MemoryTransport, memory_handle
from tulle.dataplane.upstream.http1 import H1Connection, H1Pool
from tulle.proxyconfig import validate

BATCH = 64
"""Requests between two turns of the event loop (runs the `call_soon` callbacks)."""

BODY = b"x" * 1024
NGINX_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
              b"Date: Sun, 29 Nov 2026 11:22:10 GMT\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: 1024\r\nLast-Modified: Sun, 29 Nov 2026 11:20:00 GMT\r\n"
              b"Connection: keep-alive\r\nETag: \"6564b0c0-400\"\r\nAccept-Ranges: bytes\r\n\r\n")
CHUNKED_HEAD = (b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Type: application/octet-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    what: str
    request: bytes
    response: bytes
    expect_down: bytes
    """Bytes the client must receive first (the status line and a header or two)."""
    expect_body: bytes
    """...and last."""


SCENARIOS = [
    Scenario("get", "wrk's GET, nginx's 1 KiB keep-alive response (the bench-quick shape)",
             b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n",
             NGINX_HEAD + BODY, b"HTTP/1.1 200 OK\r\n", BODY),
    Scenario("get-curl", "curl-like GET with a few headers, same response",
             b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: web.example:8080\r\n"
             b"User-Agent: curl/7.88.1\r\nAccept: */*\r\nX-Request-Id: abc\r\n\r\n",
             NGINX_HEAD + BODY, b"HTTP/1.1 200 OK\r\n", BODY),
    Scenario("chunked", "GET, chunked 1 KiB response (re-framed chunk by chunk)",
             b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n",
             CHUNKED_HEAD + b"400\r\n" + BODY + b"\r\n0\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
             BODY + b"\r\n0\r\n\r\n"),
    Scenario("post", "POST with a 1 KiB body, 1 KiB response",
             b"POST /submit HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nContent-Type: text/plain\r\n"
             b"Content-Length: 1024\r\n\r\n" + BODY,
             NGINX_HEAD + BODY, b"HTTP/1.1 200 OK\r\n", BODY),
    Scenario("routed", "the routing row's request (a query, x-tenant and x-debug), same response",
             b"GET /1k?tier=gold HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nx-tenant: acme-42\r\n"
             b"x-debug: 1\r\n\r\n",
             NGINX_HEAD + BODY, b"HTTP/1.1 200 OK\r\n", BODY),
    Scenario("http10", "HTTP/1.0 keep-alive client (the general response path)",
             b"GET / HTTP/1.0\r\nHost: 127.0.0.1:18080\r\nConnection: keep-alive\r\n\r\n",
             NGINX_HEAD + BODY, b"HTTP/1.1 200 OK\r\n", BODY),
]


FILTERS = [
    {"type": "RequestHeaderModifier", "set": [{"name": "x-env", "value": "prod"}],
     "remove": ["x-debug"]},
    {"type": "ResponseHeaderModifier", "add": [{"name": "x-served-by", "value": "tulle"}],
     "remove": ["server"]},
]


RETRY = {"num_retries": 2, "retry_on": ["5xx", "connect-failure", "refused-stream"]}
WITH_RETRY = [False]
"""Set by `--retry`: the route of `build` gets `RETRY`."""


def build(filters: bool = False, routes: bool = False,
          protocol: str = "http1") -> tuple[ListenerHandle, H1Pool]:
    """A one-listener, one-route, one-cluster snapshot, as `ProxyServer` builds it; with
    `routes`, the routing row's table instead (`bench/routing_peers.py`: ten rules, the
    `routed` request matching the last, which has the header filters); `protocol` is the
    listener's (`bench.micro_connect` builds an `auto` one)."""
    rule: dict[str, Any] = {"backends": [{"cluster": "origin"}]}
    if filters:
        rule["filters"] = FILTERS
    if WITH_RETRY[0]:
        rule["retry"] = RETRY
    cfg = validate(tulle_routing_config(18080, 18079, 18081, 18082) if routes else {
        "listeners": [{"name": "bench", "port": 18080, "protocol": protocol, "route_table": "rt"}],
        "clusters": [{"name": "origin", "lb_policy": os.environ.get("TULLE_BENCH_LB", "round_robin"),
                      "endpoints": [{"address": "127.0.0.1", "port": 18081}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": [rule]}]}],
    })
    handle = memory_handle(cfg, "bench")
    cluster = handle.ctx.clusters["origin"]
    pool = cluster.pool_for(cluster.endpoints[0])
    assert isinstance(pool, H1Pool)
    return handle, pool


async def run(sc: Scenario, n: int, repeat: int,
              profile: cProfile.Profile | None, filters: bool = False,
              routes: bool = False) -> float:
    handle, pool = build(filters, routes)
    filters = filters or routes
    down_t, up_t = MemoryTransport(keep=1 << 16), MemoryTransport(keep=1 << 16)
    down = H1Downstream(handle)
    down.connection_made(down_t)  # type: ignore[arg-type]
    up = H1Connection(pool)
    up.connection_made(up_t)  # type: ignore[arg-type]
    pool.idle.append(up)
    feed_down: Callable[[bytes], None] = down.data_received
    feed_up: Callable[[bytes], None] = up.data_received
    req, resp = sc.request, sc.response

    # Check the bytes once: the origin gets the request, the client the whole response.
    feed_down(req)
    await asyncio.sleep(0)  # writes leave at the end of the loop's turn (ADR 0065)
    sent = up_t.take()
    assert sent.startswith(req.split(b" ", 1)[0] + b" "), sent[:80]
    assert b"x-forwarded-for: 127.0.0.1\r\n" in sent and b"x-request-id: " in sent, sent
    assert (b"x-env: prod\r\n" in sent) == filters, sent
    feed_up(resp)
    await asyncio.sleep(0)
    got = down_t.take()
    assert got.startswith(sc.expect_down) and got.endswith(sc.expect_body), got[:300]
    assert (b"x-served-by: tulle\r\n" in got) == filters, got
    assert (b"\r\nserver: " in got.lower()) != filters, got
    assert pool.idle == [up], "the upstream connection was not released for reuse"

    for _ in range(max(n // 4, 1000)):  # warm up: caches, allocator, the metric children
        feed_down(req)
        feed_up(resp)
    await asyncio.sleep(0)

    best = float("inf")
    for _ in range(repeat):
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        for i in range(n):
            feed_down(req)
            feed_up(resp)
            if i % BATCH == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        best = min(best, time.process_time() - t0)
        if profile is not None:
            profile.disable()
    assert pool.idle == [up] and not down.closing and not down_t.closed and not up_t.closed
    return best / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="requests per repeat (default 3000)")
    ap.add_argument("--repeat", type=int, default=25, help="best of this many (default 25)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--profile", metavar="SCENARIO", default="",
                    help="cProfile one scenario and print the top functions by own time")
    ap.add_argument("--filters", action="store_true",
                    help="give the route a request and a response header modifier")
    ap.add_argument("--routes", action="store_true",
                    help="the routing row's ten-rule table (with the filters); use with "
                         "--only routed")
    ap.add_argument("--retry", action="store_true",
                    help="give the route a retry policy (and so the cluster's budget)")
    args = ap.parse_args(argv)
    WITH_RETRY[0] = args.retry
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    if args.profile:
        sc = next(s for s in SCENARIOS if s.name == args.profile)
        prof = cProfile.Profile()
        runner(run(sc, args.n, 1, prof, args.filters, args.routes))
        pstats.Stats(prof).sort_stats("tottime").print_stats(int(os.environ.get("PROFILE_ROWS", "25")))
        return
    wanted = set(args.only.split(",")) if args.only else None
    from tulle import native

    mode, why = native.mode()
    print(f"CPU µs per request, best of {args.repeat} x {args.n}; function calls per request "
          f"(Python {sys.version.split()[0]}; hot path {mode}: {why}; compiled code's calls are "
          f"not counted)")
    for sc in SCENARIOS:
        if wanted is not None and sc.name not in wanted:
            continue
        us = runner(run(sc, args.n, args.repeat, None, args.filters, args.routes))
        calls = calls_per_request(sc, runner, args.filters, args.routes)
        print(f"  {sc.name:<9} {us:7.1f} µs {calls:6.1f} calls  {sc.what}")


def calls_per_request(sc: Scenario, runner: Callable[[Any], Any], filters: bool = False,
                      routes: bool = False) -> float:
    """Python and C function calls per request: a machine-independent companion to the time
    (which a shared, noisy machine moves by tens of percent)."""
    n = 2000
    prof = cProfile.Profile()
    runner(run(sc, n, 1, prof, filters, routes))
    total = sum(nc for (_, nc, _, _, _) in pstats.Stats(prof).stats.values())  # type: ignore[attr-defined]
    return float(total) / n


if __name__ == "__main__":
    main()
