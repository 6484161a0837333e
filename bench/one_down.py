"""Issue 10's scenario "one of three endpoints dies", large: success ratio and time to ejection.

    .venv/bin/python -m bench.one_down --requests 20000 --json bench/results/resilience.json

Why here: `tests/integration/dataplane/test_endpoint_health.py` runs it small in one process;
this runs it with a real `tulle proxy run` process (its own event loop and CPU), three loopback
HTTP/1.1 upstreams and keep-alive clients in this process, and the cluster's outlier detection
at its **defaults** (five local-origin failures in a row eject; no retries configured).  After
`kill_at` of the requests one upstream dies without a word (listener closed, every connection
reset: new connections are refused).  Written (merged into the JSON file, whose other keys the
other resilience scenarios write):

* `one_down_success_ratio`: 200s / requests over the whole run;
* `one_down_ejection_s`: from the kill to the proxy's admin `/clusters` showing the endpoint
  out (polled every 10 ms, so within 10 ms);
* `one_down_requests`, `one_down_failures`.
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

from bench.peers import tulle_cmd
from bench.procs import ProcessSet, free_port, wait_port

_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Origin(asyncio.Protocol):
    """Keep-alive HTTP/1.1 origin answering every GET 200; `conns` is the origin's set."""

    def __init__(self, conns: set[asyncio.Transport]) -> None:
        self.conns = conns
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            assert self.transport is not None
            self.transport.write(_RESPONSE * n)


async def start_origin() -> tuple[asyncio.Server, set[asyncio.Transport]]:
    conns: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Origin(conns), "127.0.0.1", 0)
    return srv, conns


def proxy_config(port: int, admin: int, upstreams: list[int]) -> dict[str, Any]:
    return {
        "admin": {"port": admin},
        "listeners": [{"name": "out", "port": port, "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "backend", "outlier_detection": {},
                      "endpoints": [{"address": "127.0.0.1", "port": p} for p in upstreams]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "backend"}]}]}]}],
    }


def _out(admin: int, key: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2) as r:
        clusters = json.loads(r.read())
    (c,) = [c for c in clusters if c["name"] == "backend"]
    return any(e["address"] == key and not e["healthy"] for e in c["endpoints"])


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def run(requests: int, concurrency: int, kill_at: float) -> dict[str, Any]:
    origins = [await start_origin() for _ in range(3)]
    ports = [s.sockets[0].getsockname()[1] for s, _ in origins]
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp, ProcessSet(Path(tmp)) as ps:
        conf = Path(tmp) / "proxy.json"
        conf.write_text(json.dumps(proxy_config(port, admin, ports)))
        proc = ps.start("tulle", [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                                  "--watch-interval", "0", "--log-level", "error"])
        wait_port(port, proc)
        loop = asyncio.get_running_loop()
        sent = ok = 0
        killed_at = 0.0
        kill_after = int(requests * kill_at)

        async def client() -> None:
            nonlocal sent, ok, killed_at
            r, w = await asyncio.open_connection("127.0.0.1", port)
            while sent < requests:
                sent += 1
                if sent == kill_after:
                    srv, conns = origins[2]
                    srv.close()
                    for t in list(conns):
                        t.abort()
                    killed_at = time.monotonic()
                w.write(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
                try:
                    status = await asyncio.wait_for(_read_status(r), 10)
                    ok += status == 200  # (after the await: `ok +=` reads ok first)
                except (ConnectionError, asyncio.IncompleteReadError):
                    w.close()
                    r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()

        async def watch() -> float:
            while not killed_at:
                await asyncio.sleep(0.01)
            key = f"127.0.0.1:{ports[2]}"
            for _ in range(3000):  # 30 s at most
                if await loop.run_in_executor(None, _out, admin, key):
                    return time.monotonic() - killed_at
                await asyncio.sleep(0.01)
            return -1.0

        started = time.monotonic()
        watcher = loop.create_task(watch())
        await asyncio.gather(*(client() for _ in range(concurrency)))
        took = time.monotonic() - started
        ejection = await watcher
        if ok < requests * 0.99:
            print("proxy log (last lines):\n" + proc.tail(20))
        for srv, _ in origins:
            srv.close()
    return {"one_down_success_ratio": round(ok / requests, 5),
            "one_down_ejection_s": round(ejection, 3),
            "one_down_requests": requests, "one_down_failures": requests - ok,
            "one_down_run_s": round(took, 2)}


def merge_into(path: Path, found: dict[str, Any]) -> None:
    """Merge `found` into the shared results file (other scenarios write their own keys)."""
    try:
        current = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    current.update(found)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--kill-at", type=float, default=0.1,
                    help="share of the requests sent before the endpoint dies")
    ap.add_argument("--json", type=Path, help="merge the figures into this file")
    args = ap.parse_args(argv)
    found = asyncio.run(run(args.requests, args.concurrency, args.kill_at))
    print(json.dumps(found, indent=2))
    if args.json:
        merge_into(args.json, found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
