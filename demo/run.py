"""`make demo`: two services meshed by Tulle sidecar proxies on loopback, with live traffic.

    load ─> [frontend sidecar: inbound] ─> frontend app ─> [frontend sidecar: outbound]
        ─> [backend sidecar: inbound] ─> backend app

Everything runs on 127.0.0.1 with free ports; every process is stopped on exit (also on
Ctrl-C).  Traffic is bounded: DEMO_SECONDS (default 20) at DEMO_RPS (default 50).  While it
runs, the sidecars' admin endpoints are printed so you can look at /metrics, /config_dump and
/clusters yourself.  Later issues grow this into the full mesh demo (control plane, canary,
gRPC, a flaky service).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TULLE = str(Path(PY).parent / "tulle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sidecar_config(name: str, admin: int, inbound: int, app_port: int,
                   outbound: int | None = None, backend_inbound: int | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "version": "demo-1",
        "node": {"name": name, "namespace": "demo", "service": name},
        "admin": {"port": admin},
        "listeners": [{"name": "inbound", "port": inbound, "direction": "inbound",
                       "protocol": "http1", "cluster": f"inbound|{name}"}],
        "clusters": [{"name": f"inbound|{name}",
                      "endpoints": [{"address": "127.0.0.1", "port": app_port}]}],
    }
    if outbound is not None and backend_inbound is not None:
        cfg["listeners"].append({"name": "outbound", "port": outbound, "protocol": "http1",
                                 "route_table": "outbound"})
        cfg["clusters"].append({"name": "outbound|backend", "endpoints": [
            {"address": "127.0.0.1", "port": backend_inbound}]})
        cfg["route_tables"] = [{"name": "outbound", "virtual_hosts": [
            {"name": "backend", "domains": ["backend", "backend.demo"],
             "rules": [{"backends": [{"cluster": "outbound|backend"}]}]}]}]
    return cfg


async def wait_ready(url: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def load(url: str, seconds: float, rps: int, admins: dict[str, int]) -> None:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    start = time.monotonic()
    interval = 1.0 / rps
    async with aiohttp.ClientSession() as s:
        async def one() -> None:
            t0 = time.monotonic()
            try:
                async with s.get(url) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
            except aiohttp.ClientError:
                codes[0] = codes.get(0, 0) + 1
            latencies.append((time.monotonic() - t0) * 1000)

        tasks: set[asyncio.Task[None]] = set()
        next_report = start + 1
        sent = 0
        while time.monotonic() - start < seconds:
            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
            now = time.monotonic()
            if now >= next_report:
                next_report += 1
                window = sorted(latencies[-rps:]) or [0.0]
                p50 = window[len(window) // 2]
                p99 = window[min(len(window) - 1, int(len(window) * 0.99))]
                ok = codes.get(200, 0)
                fe = await scrape(s, admins["frontend"])
                be = await scrape(s, admins["backend"])
                print(f"  t={now - start:4.0f}s  sent={sent:5d}  200s={ok:5d}  errors="
                      f"{sum(v for k, v in codes.items() if k != 200):3d}  p50={p50:6.2f} ms  "
                      f"p99={p99:6.2f} ms  | frontend sidecar: "
                      f"{metric_sum(fe, 'tulle_proxy_requests_total', listener='inbound'):.0f} in / "
                      f"{metric_sum(fe, 'tulle_proxy_requests_total', listener='outbound'):.0f} out"
                      f"  backend sidecar: "
                      f"{metric_sum(be, 'tulle_proxy_requests_total', listener='inbound'):.0f} in",
                      flush=True)
            await asyncio.sleep(max(0.0, start + sent * interval - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=5)
    total = sum(codes.values())
    print(f"\nsent {total} requests: " + ", ".join(f"{k or 'conn-error'}: {v}"
                                                   for k, v in sorted(codes.items())))


async def scrape(s: aiohttp.ClientSession, admin: int) -> str:
    try:
        async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            return await r.text()
    except aiohttp.ClientError:
        return ""


async def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "20"))
    rps = int(os.environ.get("DEMO_RPS", "50"))
    ports = {k: free_port() for k in ("fe_app", "be_app", "fe_in", "fe_out", "be_in",
                                       "fe_admin", "be_admin")}
    tmp = Path(tempfile.mkdtemp(prefix="tulle-demo-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> None:
        out = open(tmp / log, "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=ROOT))

    try:
        fe_cfg = sidecar_config("frontend", ports["fe_admin"], ports["fe_in"], ports["fe_app"],
                                ports["fe_out"], ports["be_in"])
        be_cfg = sidecar_config("backend", ports["be_admin"], ports["be_in"], ports["be_app"])
        for name, cfg in (("frontend", fe_cfg), ("backend", be_cfg)):
            (tmp / f"{name}-sidecar.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        start([PY, str(ROOT / "demo/apps.py"), "backend", str(ports["be_app"])], "backend.log")
        start([PY, str(ROOT / "demo/apps.py"), "frontend", str(ports["fe_app"]),
               f"http://127.0.0.1:{ports['fe_out']}"], "frontend.log")
        for name in ("frontend", "backend"):
            start([TULLE, "proxy", "run", "--config", str(tmp / f"{name}-sidecar.yaml")],
                  f"{name}-sidecar.log")
        for admin in ("fe_admin", "be_admin"):
            await wait_ready(f"http://127.0.0.1:{ports[admin]}/ready")
        await wait_ready(f"http://127.0.0.1:{ports['be_app']}/healthz")
        await wait_ready(f"http://127.0.0.1:{ports['fe_in']}/")
        print(f"""
Tulle demo: two services, each behind a sidecar proxy (all on 127.0.0.1)
  load ─> frontend sidecar :{ports['fe_in']} (inbound) ─> frontend app :{ports['fe_app']}
       ─> frontend sidecar :{ports['fe_out']} (outbound, Host: backend)
       ─> backend sidecar :{ports['be_in']} (inbound) ─> backend app :{ports['be_app']}

Where to look while it runs ({seconds:.0f} s at {rps} rps):
  curl -s http://127.0.0.1:{ports['fe_in']}/                        # a request through both sidecars
  curl -s http://127.0.0.1:{ports['fe_admin']}/metrics | grep tulle_proxy_requests_total
  curl -s http://127.0.0.1:{ports['fe_admin']}/config_dump          # the frontend sidecar's config
  curl -s http://127.0.0.1:{ports['be_admin']}/clusters             # backend sidecar's upstreams
  configs and logs: {tmp}
""", flush=True)
        admins = {"frontend": ports["fe_admin"], "backend": ports["be_admin"]}
        await load(f"http://127.0.0.1:{ports['fe_in']}/", seconds, rps, admins)
        async with aiohttp.ClientSession() as s:
            for name, admin in admins.items():
                text = await scrape(s, admin)
                print(f"\n{name} sidecar /metrics (requests):")
                for line in text.splitlines():
                    if line.startswith(("tulle_proxy_requests_total",
                                        "tulle_proxy_upstream_connections_total")):
                        print("  " + line)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        print(f"\nstopped {len(procs)} processes; logs kept in {tmp}")


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
