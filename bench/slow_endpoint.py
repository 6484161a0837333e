"""Issue 10's scenario "one endpoint turns slow (+50 ms)": peak-EWMA against round robin.

Why here: the integration test (`tests/integration/dataplane/test_lb_slow_endpoint.py`) runs
it small (a few hundred requests) and `python -m bench.slow_endpoint` runs it large and writes
`slow_endpoint_p99_ms_ewma` / `slow_endpoint_p99_ms_rr` into `bench/results/resilience.json`
(merged with the keys the other resilience scenarios write).

One run: three HTTP/1.1 upstreams on 127.0.0.1 (raw asyncio servers, keep-alive; each answers
after its own delay, which the run changes), one proxy (in process, real sockets) whose
cluster has the three as endpoints under the balancer given, and `concurrency` keep-alive
clients.  A warm-up with every endpoint fast, then endpoint 0 turns slow and `requests`
requests are timed end to end; the p99 and the slow endpoint's share come back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate

RESULTS = Path(__file__).parent / "results" / "resilience.json"
_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Upstreams:
    """`n` HTTP/1.1 servers; `delays[i]` seconds before server i answers, `served[i]` counts."""

    def __init__(self, n: int) -> None:
        self.delays = [0.0] * n
        self.served = [0] * n
        self.ports: list[int] = []
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        for i in range(len(self.delays)):
            srv = await asyncio.start_server(
                lambda r, w, i=i: self._serve(i, r, w), "127.0.0.1", 0)
            self._servers.append(srv)
            self.ports.append(srv.sockets[0].getsockname()[1])

    async def _serve(self, i: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GETs only: no body
                if self.delays[i]:
                    await asyncio.sleep(self.delays[i])
                self.served[i] += 1
                writer.write(_RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass  # the client (the proxy) went away, or the run is over
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        for w in list(self._writers):
            w.close()
        for s in self._servers:
            s.close()
            await s.wait_closed()


def proxy_config(ports: list[int], policy: str) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "route_table": "rt"}],
        "clusters": [{"name": "backend", "lb_policy": policy,
                      "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "backend"}]}]}]}],
    }


@asynccontextmanager
async def setup(policy: str, n: int = 3) -> AsyncIterator[tuple[Upstreams, int]]:
    ups = Upstreams(n)
    await ups.start()
    server = ProxyServer()
    try:
        await server.apply(validate(proxy_config(ups.ports, policy)))
        yield ups, server.bound_port("out")
    finally:
        await server.close()
        await ups.close()


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def load(port: int, requests: int, concurrency: int) -> list[float]:
    """`requests` GETs over `concurrency` keep-alive connections; each one's seconds."""
    latencies: list[float] = []
    left = [requests]

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                t = time.perf_counter()
                writer.write(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
                status = await asyncio.wait_for(_read_response(reader), 10.0)
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    raise AssertionError(f"status {status}")
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class Run:
    policy: str
    p99_ms: float
    slow_share: float
    requests: int


async def slow_endpoint_run(policy: str, *, requests: int = 300, concurrency: int = 4,
                            slow_ms: float = 50.0, warmup: int = 60) -> Run:
    async with setup(policy) as (ups, port):
        await load(port, warmup, concurrency)
        ups.delays[0] = slow_ms / 1000  # endpoint 0 turns slow
        before = list(ups.served)
        latencies = await load(port, requests, concurrency)
        slow = ups.served[0] - before[0]
        total = sum(ups.served) - sum(before)
    return Run(policy, p99(latencies) * 1000, slow / max(1, total), requests)


def write_results(values: dict[str, Any], path: Path = RESULTS) -> None:
    """Merge `values` into the shared results file (other scenarios write their own keys)."""
    try:
        current = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    current.update(values)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    runs = {p: asyncio.run(slow_endpoint_run(p, requests=args.requests,
                                             concurrency=args.concurrency))
            for p in ("peak_ewma", "round_robin")}
    for r in runs.values():
        print(f"{r.policy:12} p99 {r.p99_ms:7.2f} ms  slow endpoint share "
              f"{r.slow_share:6.2%}  ({r.requests} requests)")
    if not args.no_write:
        write_results({
            "slow_endpoint_p99_ms_ewma": round(runs["peak_ewma"].p99_ms, 2),
            "slow_endpoint_p99_ms_rr": round(runs["round_robin"].p99_ms, 2),
            "slow_endpoint_share_ewma": round(runs["peak_ewma"].slow_share, 4),
            "slow_endpoint_share_rr": round(runs["round_robin"].slow_share, 4),
            "slow_endpoint_requests": args.requests,
        })


if __name__ == "__main__":
    main()
