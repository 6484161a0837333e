"""Issue 10's "all endpoints fail" scenario at bench scale: retries stay within the budget.

    .venv/bin/python -m bench.resilience_retries --requests 20000 --json bench/results/resilience.json

A real proxy process (`tulle proxy run`) routes to two origins that answer every request 503,
with a retry policy on the route (2 retries on 5xx).  Closed-loop clients send `--requests`
GETs; the origins count what reaches them, so retries = origin requests - client requests, and
`all_down_retry_ratio` = retries / requests (Linkerd's budget: <= 0.2, plus its reserve of
10/s x the 10 s window, and 10/s for each second the run lasts, over the requests).  Run twice:
with the cluster's default limits (`max_retries` 3 in flight also caps retries: the ratio a
user sees), and with `max_retries` raised so the budget alone limits (`..._budget_only`).  The
keys are merged into the JSON file (other parts of issue 10 write theirs there).  The proxy is
stopped on exit, whatever happens (bench/procs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peers import tulle_cmd, wait_port
from bench.procs import ProcessSet, free_port


class FailingOrigin:
    """Answers every HTTP/1.1 request 503 on a keep-alive connection; counts them."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                await r.readuntil(b"\r\n\r\n")  # GETs only: no body to read
                self.requests += 1
                w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\ndown\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            w.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def proxy_config(port: int, admin: int, origins: list[int], max_retries: int) -> dict[str, Any]:
    return {
        "admin": {"address": "127.0.0.1", "port": admin},
        "listeners": [{"name": "bench", "port": port, "route_table": "rt"}],
        "clusters": [{"name": "down", "limits": {"max_retries": max_retries},
                      "endpoints": [{"address": "127.0.0.1", "port": p} for p in origins]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [{
            "backends": [{"cluster": "down"}],
            "retry": {"num_retries": 2, "retry_on": ["5xx", "connect-failure"]}}]}]}],
    }


async def _client(port: int, n: int, statuses: dict[int, int]) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            w.write(b"GET /x HTTP/1.1\r\nHost: down\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await r.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        w.close()


async def _metric(admin: int, name: str) -> float:
    r, w = await asyncio.open_connection("127.0.0.1", admin)
    w.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    body = (await r.read()).decode()
    w.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def scenario(ps: ProcessSet, requests: int, conns: int, max_retries: int) -> dict[str, Any]:
    origins = [FailingOrigin(), FailingOrigin()]
    for o in origins:
        await o.start()
    port, admin = free_port(), free_port()
    conf = ps.tmp / f"down-{max_retries}.json"
    conf.write_text(json.dumps(proxy_config(port, admin, [o.port for o in origins], max_retries)))
    proc = ps.start(f"tulle-down-{max_retries}", [*tulle_cmd(), "proxy", "run", "--config",
                                                  str(conf), "--watch-interval", "0",
                                                  "--log-level", "warning"])
    try:
        await asyncio.to_thread(wait_port, port, proc)
        statuses: dict[int, int] = {}
        started = time.monotonic()
        per = requests // conns
        await asyncio.gather(*(_client(port, per, statuses) for _ in range(conns)))
        elapsed = time.monotonic() - started
        sent = per * conns
        reached = sum(o.requests for o in origins)
        retries = reached - sent
        return {"requests": sent, "origin_requests": reached, "retries": retries,
                "retry_ratio": round(retries / sent, 4), "elapsed_s": round(elapsed, 2),
                "allowed_ratio": round(0.2 + 10 * (10 + elapsed) / sent, 4),
                "budget_exhausted": await _metric(admin, "tulle_proxy_upstream_retry_budget_exhausted_total"),
                "retry_overflow": await _metric(admin, "tulle_proxy_upstream_overflow_total"),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "max_retries": max_retries}
    finally:
        ps.stop(proc)
        for o in origins:
            o.close()


async def run(requests: int, conns: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tulle-resilience-"))
    try:
        with ProcessSet(tmp) as ps:
            defaults = await scenario(ps, requests, conns, 3)
            budget_only = await scenario(ps, requests, conns, 100_000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"all_down_retry_ratio": defaults["retry_ratio"],
            "all_down_retry_ratio_budget_only": budget_only["retry_ratio"],
            "all_down": {"defaults": defaults, "budget_only": budget_only}}


def merge_into(path: Path, found: dict[str, Any]) -> None:
    """Merge `found` into the JSON object at `path`, keeping the keys others wrote there."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    old.update(found)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="all endpoints down: retries within the budget")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--json", type=Path, help="merge the figures into this file")
    args = ap.parse_args(argv)
    found = asyncio.run(run(args.requests, args.conns))
    print(json.dumps(found, indent=2))
    if args.json:
        merge_into(args.json, found)
        print(f"wrote {args.json}")
    ok = found["all_down"]["budget_only"]["retry_ratio"] <= found["all_down"]["budget_only"][
        "allowed_ratio"] + 0.005
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
