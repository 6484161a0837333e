"""Issue 10's scenario "a global limit of N/s across two proxies admits N/s ± 10% in total;
Redis stopped mid-run: fail-open keeps serving, fail-closed answers 429".

Why here: the integration test (`tests/integration/dataplane/test_global_rate_limit.py`) runs
it small and `python -m bench.global_limit` runs it large (≥ 20,000 requests) and writes
`global_limit_error_ratio` (|admitted - limit| / limit) into `bench/results/resilience.json`
(merged with the keys the other resilience scenarios write).

One run: a private `redis-server` (Debian's, on a free 127.0.0.1 port, temp dir, no
persistence), one HTTP/1.1 origin, two proxies (in process, real sockets) whose route `/open`
has a global `RateLimit` (failure mode open) and `/closed` one failing closed, both keyed the
same on both proxies.  Paced keep-alive clients offer `offered` requests per second to `/open`,
split evenly over the two proxies, for `duration` seconds; the admitted count is compared with
`limit * duration`.  Then Redis is stopped and each route gets `after_stop` more requests per
proxy: `/open` must still answer 200, `/closed` 429.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tulle.dataplane.server import ProxyServer
from tulle.net.ports import unused_port
from tulle.proxyconfig import validate

_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
RESULTS = Path(__file__).parent / "results" / "resilience.json"


def write_results(values: dict[str, Any], path: Path = RESULTS) -> None:
    """Merge `values` into the shared results file (other scenarios write their own keys)."""
    try:
        current = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    current.update(values)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def _free_port() -> int:
    return unused_port()  # (not port 0's pick: see tulle.net.ports)


class Redis:
    """A private redis-server child process; `stop()` ends it (also mid-run)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root = tempfile.mkdtemp(prefix="tulle-redisbench-")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/install-system-deps.sh "
                               "test)")
        self.proc = await asyncio.create_subprocess_exec(
            binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.root,
            "--save", "", "--appendonly", "no", "--logfile", f"{self.root}/redis.log",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        for _ in range(500):  # bounded: 10 s
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.write(b"*1\r\n$4\r\nPING\r\n")
                ok = (await asyncio.wait_for(r.readline(), 2)).startswith(b"+PONG")
                w.close()
                if ok:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(_RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
            asyncio.CancelledError):
        pass  # the proxy went away, or the run is over
    finally:
        writer.close()


def proxy_config(origin: int, redis: str, limit: int, window_ms: int,
                 timeout_ms: int) -> dict[str, Any]:
    def rule(path: str, mode: str) -> dict[str, Any]:
        return {"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                "backends": [{"cluster": "origin"}],
                "filters": [{"type": "RateLimit", "name": f"bench{path}", "global": {
                    "requests": limit, "interval_ms": window_ms, "redis": redis,
                    "key": f"bench{path}", "failure_mode": mode, "timeout_ms": timeout_ms}}]}
    return {
        "listeners": [{"name": "in", "port": 0, "route_table": "rt"}],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            rule("/open", "open"), rule("/closed", "closed")]}]}],
    }


@asynccontextmanager
async def setup(limit: int, window_ms: int, timeout_ms: int
                ) -> AsyncIterator[tuple[Redis, list[int]]]:
    redis = Redis()
    origin = await asyncio.start_server(_origin, "127.0.0.1", 0)
    servers = [ProxyServer(), ProxyServer()]
    try:
        await redis.start()
        cfg = proxy_config(origin.sockets[0].getsockname()[1], f"127.0.0.1:{redis.port}",
                           limit, window_ms, timeout_ms)
        for s in servers:
            await s.apply(validate(cfg))
        yield redis, [s.bound_port("in") for s in servers]
    finally:
        for s in servers:
            await s.close()
        origin.close()
        await redis.close()


async def _status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def paced(ports: list[int], path: bytes, rate: float, duration: float,
                clients_per_port: int = 4) -> dict[int, int]:
    """About `rate` requests per second for `duration` s over `clients_per_port` keep-alive
    clients per port, each on its own fixed schedule (a late answer skips no slot, it just
    starts the next at once); statuses counted."""
    loop = asyncio.get_running_loop()
    n = len(ports) * clients_per_port
    period = n / rate
    counts: dict[int, int] = {}
    start = loop.time() + 0.05

    async def client(port: int, k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            t = start + k * period / n
            while t < start + duration:
                delay = t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: svc\r\n\r\n")
                status = await asyncio.wait_for(_status(reader), 10.0)
                counts[status] = counts.get(status, 0) + 1
                t += period
        finally:
            writer.close()

    await asyncio.gather(*(client(p, i * len(ports) + j) for j, p in enumerate(ports)
                           for i in range(clients_per_port)))
    return counts


@dataclass
class Run:
    offered: int
    admitted: int
    expected: float
    error_ratio: float
    open_after_stop: dict[int, int]
    closed_after_stop: dict[int, int]


async def global_limit_run(*, limit_per_s: int = 100, window_ms: int = 200,
                           offered_per_s: float = 200.0, duration: float = 3.0,
                           after_stop: float = 0.5, timeout_ms: int = 10) -> Run:
    per_window = max(1, limit_per_s * window_ms // 1000)
    async with setup(per_window, window_ms, timeout_ms) as (redis, ports):
        counts = await paced(ports, b"/open", offered_per_s, duration)
        admitted = counts.get(200, 0)
        expected = limit_per_s * duration
        await redis.stop()
        after_open = await paced(ports, b"/open", offered_per_s / 2, after_stop)
        after_closed = await paced(ports, b"/closed", offered_per_s / 2, after_stop)
    return Run(sum(counts.values()), admitted, expected, abs(admitted - expected) / expected,
               after_open, after_closed)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--limit", type=int, default=500, help="requests per second admitted")
    ap.add_argument("--offered", type=float, default=1000.0, help="requests per second sent")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    run = asyncio.run(global_limit_run(limit_per_s=args.limit, offered_per_s=args.offered,
                                       duration=args.duration, after_stop=1.0))
    print(run)
    if not args.no_write:
        write_results({"global_limit_error_ratio": round(run.error_ratio, 4),
                       "global_limit_requests": run.offered,
                       "global_limit_admitted": run.admitted,
                       "global_limit_expected": run.expected})


if __name__ == "__main__":
    main()
