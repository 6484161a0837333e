"""Issue 10's scenario "a cluster is flooded past its limits", large: it fails fast with `UO`
while another cluster on the same proxy keeps serving.

    .venv/bin/python -m bench.bulkhead --requests 20000 --json bench/results/resilience.json

Why here: `tests/integration/dataplane/test_bulkhead.py` runs it small in one process; this
runs a real `tulle proxy run` process (its own event loop and CPU) with two clusters behind one
HTTP/1.1 listener: `flood` (an origin that answers after `--delay-ms`, limits `max_requests`
8 — what a CircuitBreakerPolicy with `maxRequests: 8` compiles to) and `other` (an origin
that answers at once, the default limits).  `--flood-concurrency` keep-alive clients hammer
`/flood` for as long as `--other-concurrency` clients send `--requests` requests to `/other`.
Written (merged into the JSON file, whose other keys the other resilience scenarios write):

* `bulkhead_other_cluster_success_ratio`: 200s / requests to `other` over the run;
* `bulkhead_flood_uo_ratio`: of the flood's answers, the share that were 503 `UO` (from the
  proxy's `tulle_proxy_requests_total{cluster="flood",response_flags="UO"}`);
* `bulkhead_flood_uo_p50_ms`, `bulkhead_flood_uo_p99_ms`: how fast a refused request comes
  back (fail fast: far below the flood origin's delay);
* `bulkhead_other_p99_ms`, `bulkhead_requests`, `bulkhead_flood_requests`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.one_down import _read_status, merge_into
from bench.peers import tulle_cmd
from bench.procs import ProcessSet, free_port, wait_port

FLOOD_LIMITS = {"max_requests": 8}


class DelayedOrigin(asyncio.Protocol):
    """Keep-alive HTTP/1.1 origin answering each GET 200 after `delay` seconds (one request at
    a time per connection, as the proxy's pools send them)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, _, self.buf = self.buf.partition(b"\r\n\r\n")
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def proxy_config(port: int, admin: int, flood: int, other: int) -> dict[str, Any]:
    def rule(path: str, cluster: str) -> dict[str, Any]:
        return {"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                "backends": [{"cluster": cluster}]}

    return {
        "admin": {"port": admin},
        "listeners": [{"name": "out", "port": port, "protocol": "http1", "route_table": "rt"}],
        "clusters": [
            {"name": "flood", "limits": FLOOD_LIMITS,
             "endpoints": [{"address": "127.0.0.1", "port": flood}]},
            {"name": "other", "endpoints": [{"address": "127.0.0.1", "port": other}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [rule("/flood", "flood"), rule("/other", "other")]}]}],
    }


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return -1.0
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)


async def run(requests: int, flood_c: int, other_c: int, delay_ms: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    flood_srv = await loop.create_server(lambda: DelayedOrigin(delay_ms / 1000), "127.0.0.1", 0)
    other_srv = await loop.create_server(lambda: DelayedOrigin(0), "127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in (flood_srv, other_srv)]
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp, ProcessSet(Path(tmp)) as ps:
        conf = Path(tmp) / "proxy.json"
        conf.write_text(json.dumps(proxy_config(port, admin, *ports)))
        proc = ps.start("tulle", [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                                  "--watch-interval", "0", "--log-level", "error"])
        wait_port(port, proc)
        sent = ok = flood_sent = 0
        done = False
        other_lat: list[float] = []
        refused_lat: list[float] = []

        async def other() -> None:
            nonlocal sent, ok
            r, w = await asyncio.open_connection("127.0.0.1", port)
            while sent < requests:
                sent += 1
                t0 = time.monotonic()
                w.write(b"GET /other HTTP/1.1\r\nHost: svc\r\n\r\n")
                try:
                    status = await asyncio.wait_for(_read_status(r), 10)
                    ok += status == 200
                    other_lat.append(time.monotonic() - t0)
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                    w.close()
                    r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()

        async def flood() -> None:
            nonlocal flood_sent
            r, w = await asyncio.open_connection("127.0.0.1", port)
            while not done:
                flood_sent += 1
                t0 = time.monotonic()
                w.write(b"GET /flood HTTP/1.1\r\nHost: svc\r\n\r\n")
                try:
                    status = await asyncio.wait_for(_read_status(r), 10)
                except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                    w.close()
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    continue
                if status == 503:
                    refused_lat.append(time.monotonic() - t0)
            w.close()

        started = time.monotonic()
        flooders = [loop.create_task(flood()) for _ in range(flood_c)]
        await asyncio.gather(*(other() for _ in range(other_c)))
        done = True
        await asyncio.gather(*flooders)
        took = time.monotonic() - started
        text = await loop.run_in_executor(None, _scrape, admin)
        uo = metric(text, "tulle_proxy_requests_total", cluster="flood", response_flags="UO")
        flood_all = metric(text, "tulle_proxy_requests_total", cluster="flood")
        other_overflow = metric(text, "tulle_proxy_upstream_overflow_total", cluster="other")
        if ok < requests:
            print("proxy log (last lines):\n" + proc.tail(20))
        flood_srv.close()
        other_srv.close()
    return {"bulkhead_other_cluster_success_ratio": round(ok / requests, 5),
            "bulkhead_flood_uo_ratio": round(uo / flood_all, 4) if flood_all else 0.0,
            "bulkhead_flood_uo_p50_ms": _pct(refused_lat, 0.5),
            "bulkhead_flood_uo_p99_ms": _pct(refused_lat, 0.99),
            "bulkhead_flood_delay_ms": delay_ms,
            "bulkhead_other_p99_ms": _pct(other_lat, 0.99),
            "bulkhead_other_overflow": int(other_overflow),
            "bulkhead_requests": requests, "bulkhead_flood_requests": flood_sent,
            "bulkhead_run_s": round(took, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000,
                    help="requests to the other cluster (the flood runs as long)")
    ap.add_argument("--flood-concurrency", type=int, default=32)
    ap.add_argument("--other-concurrency", type=int, default=8)
    ap.add_argument("--delay-ms", type=int, default=200,
                    help="how long the flooded cluster's origin takes per request")
    ap.add_argument("--json", type=Path, help="merge the figures into this file")
    args = ap.parse_args(argv)
    found = asyncio.run(run(args.requests, args.flood_concurrency, args.other_concurrency,
                            args.delay_ms))
    print(json.dumps(found, indent=2))
    if args.json:
        merge_into(args.json, found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
