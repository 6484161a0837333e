"""The resilience row's Python cost per request (issue 10), without sockets: peak-EWMA over two
endpoints, retries with their budget and the circuit breaker's limits, next to the plain route.

    .venv/bin/python -m bench.micro_resilience [-n 3000] [--repeat 15] [--profile]
    .venv/bin/python -m bench.micro_resilience --balancers [--repeat 3]

`bench.run --peers tulle-resilience,haproxy-resilience` measures the whole proxy and needs an
idle machine; this builds the same cluster and route (`bench/resilience_peers.py`: two
endpoints, `peak_ewma`, `limits`, `retry`) exactly as a snapshot does, gives each endpoint's
pool one in-memory upstream connection (`listeners/memory.py`), and feeds the same bytes as
`bench.micro_http1`'s `get` scenario: each request goes to the connection the balancer picked
(told by which transport was written to), which answers it.  The `plain` case is one endpoint,
round robin, no retry, no limits: what `tulle` runs.  Each case first checks that the client
gets the whole response and that both endpoints take requests (peak-EWMA spreads load when the
latencies are equal), so a faster but wrong path cannot be measured.  Numbers are the median
and spread of best-of-batch CPU µs per request over `--repeat` runs, with Python function calls
per request from the profiler, which no neighbour on a shared machine can move.

`--balancers` times the balancers alone, per request: peak-EWMA's pick over two endpoints with
equal latencies, and ring hash and Maglev over three, each with the request's hash key taken
from a header (`lb_hash.hash_key`), as a cluster with hash policies does.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from typing import Any

from bench.micro_http1 import BATCH, BODY, NGINX_HEAD
from bench.peers import RETRY
from bench.resilience_peers import LIMITS, tulle_resilience_config
from tulle import native
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.listeners.memory import MemoryTransport
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager
from tulle.dataplane.upstream.http1 import H1Connection, H1Pool
from tulle.proxyconfig import validate

REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = NGINX_HEAD + BODY


def _config(resilience: bool) -> dict[str, Any]:
    raw = tulle_resilience_config(18080, 18079, [18081, 18082] if resilience else [18081])
    if not resilience:
        cluster = raw["clusters"][0]  # type: ignore[index]
        cluster["lb_policy"] = "round_robin"
        del cluster["limits"]
        raw["route_tables"][0]["virtual_hosts"][0]["rules"][0].pop("retry")  # type: ignore[index]
    else:
        assert raw["clusters"][0]["limits"] == LIMITS  # type: ignore[index]
        assert raw["route_tables"][0]["virtual_hosts"][0]["rules"][0]["retry"] == RETRY  # type: ignore[index]
    return raw


class Rig:
    """One downstream connection and one upstream connection per endpoint, in memory."""

    def __init__(self, resilience: bool) -> None:
        cfg = validate(_config(resilience))
        metrics = ProxyMetrics()
        routers = {t.name: Router(t, cfg.settings.request_timeout_ms) for t in cfg.route_tables}
        manager = ClusterManager(metrics)
        manager.commit(manager.prepare(cfg.clusters, cfg.settings))
        clusters = manager.clusters
        ctx = ListenerContext(cfg.listeners[0], cfg.settings, routers, clusters, metrics)
        handle = ListenerHandle("bench", ctx, m_active=metrics.connections_active.labels("bench"),
                                m_total=metrics.connections_total.labels("bench"))
        self.down_t = MemoryTransport(keep=1 << 16)
        self.down = H1Downstream(handle)
        self.down.connection_made(self.down_t)  # type: ignore[arg-type]
        cluster = clusters["origin"]
        self.ups: list[tuple[MemoryTransport, H1Connection]] = []
        self.pools: list[H1Pool] = []
        for ep in cluster.endpoints:
            pool = cluster.pool_for(ep)
            assert isinstance(pool, H1Pool)
            t = MemoryTransport(keep=1 << 16)
            up = H1Connection(pool)
            up.connection_made(t)  # type: ignore[arg-type]
            pool.idle.append(up)
            self.ups.append((t, up))
            self.pools.append(pool)
        self.served = [0] * len(self.ups)

    def one(self) -> None:
        """One request: to the downstream, then the picked upstream answers it."""
        ups = self.ups
        self.down.data_received(REQUEST)
        for i, (_, up) in enumerate(ups):
            if up.stream is not None:  # the picked connection (its request leaves at the turn's end)
                self.served[i] += 1
                up.data_received(RESPONSE)
                return
        raise AssertionError("no upstream connection was written to")


async def _run(resilience: bool, n: int, repeat: int, profile: cProfile.Profile | None) -> list[float]:
    rig = Rig(resilience)
    rig.one()
    await asyncio.sleep(0)
    got = rig.down_t.take()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(BODY), got[:200]
    for t, _ in rig.ups:
        t.take()
    for _ in range(max(n // 4, 1000)):  # warm up: caches, allocator, metric children
        rig.one()
    await asyncio.sleep(0)
    if resilience:
        assert min(rig.served) > 0, f"one endpoint took no request: {rig.served}"
    out = []
    for _ in range(repeat):
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        for i in range(n):
            rig.one()
            if i % BATCH == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        out.append((time.process_time() - t0) / n * 1e6)
        if profile is not None:
            profile.disable()
    for pool, (t, up) in zip(rig.pools, rig.ups, strict=True):
        assert pool.idle == [up] and not t.closed, "an upstream connection was not reused"
    assert not rig.down.closing
    return out


def balancers(repeat: int, n: int = 20000) -> dict[str, list[float]]:
    """CPU µs per pick, per balancer: `repeat` runs, each the best of 5 batches of `n`."""
    from tulle.dataplane.exchange import RequestHead
    from tulle.dataplane.upstream.lb import EndpointState
    from tulle.dataplane.upstream.lb_hash import Maglev, RingHash, hash_key
    from tulle.dataplane.upstream.lb_load import PeakEwma
    from tulle.proxyconfig.model import HashPolicy

    head = RequestHead(b"GET", b"/1k", b"127.0.0.1:18080", b"http",
                       [(b"user-agent", b"wrk"), (b"x-user", b"alice")])
    policies = [HashPolicy(type="header", name="x-user")]
    two = [EndpointState("127.0.0.1", 18081 + i) for i in range(2)]
    for ep in two:
        ep.sample(0.0002, time.monotonic())
    ewma = PeakEwma(two)
    three = [EndpointState("127.0.0.1", 18081 + i) for i in range(3)]
    ring, maglev = RingHash(three), Maglev(three)

    def peak_ewma() -> None:
        ep = ewma.pick()
        assert ep is not None
        ep.active += 1  # as an attempt does while the request is in flight
        ep.active -= 1

    def hashing(lb: RingHash | Maglev) -> Any:
        def pick() -> None:
            assert lb.pick(hash_key(head, policies)) is not None
        return pick

    out: dict[str, list[float]] = {}
    for name, call in (("peak_ewma", peak_ewma), ("ring_hash", hashing(ring)),
                       ("maglev", hashing(maglev))):
        runs = []
        for _ in range(repeat):
            best = float("inf")
            for _ in range(5):
                t0 = time.process_time()
                for _ in range(n):
                    call()
                best = min(best, time.process_time() - t0)
            runs.append(best / n * 1e6)
        out[name] = runs
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=15, help="runs; each the best of 3 batches")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the resilience case and print the top functions")
    ap.add_argument("--balancers", action="store_true",
                    help="time the balancers' pick alone (peak-EWMA, ring hash, Maglev)")
    args = ap.parse_args(argv)
    import uvloop

    if args.balancers:
        mode, why = native.mode()
        print(f"CPU µs per pick, median (min-max) of {args.repeat} runs; hot path {mode}: {why}")
        for name, runs in balancers(args.repeat).items():
            print(f"  {name:<10} {statistics.median(runs):5.2f} µs "
                  f"({min(runs):.2f}-{max(runs):.2f})")
        return

    if args.profile:
        prof = cProfile.Profile()
        uvloop.run(_run(True, args.n, 1, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    mode, why = native.mode()
    print(f"CPU µs per request, median (min-max) of {args.repeat} runs, each the best of 3 x "
          f"{args.n}; hot path {mode}: {why}")
    for name, resilience in (("plain", False), ("resilience", True)):
        runs = [min(uvloop.run(_run(resilience, args.n, 3, None))) for _ in range(args.repeat)]
        prof = cProfile.Profile()
        uvloop.run(_run(resilience, 2000, 1, prof))
        calls = sum(nc for (_, nc, _, _, _) in pstats.Stats(prof).stats.values()) / 2000  # type: ignore[attr-defined]
        print(f"  {name:<11} {statistics.median(runs):6.2f} µs ({min(runs):.2f}-{max(runs):.2f})"
              f" {calls:5.1f} calls")


if __name__ == "__main__":
    main()
