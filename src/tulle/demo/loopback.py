"""The demo without root (`tulle demo --loopback`, or `tulle demo` run as another user): a
control plane with an embedded store, an application meshed by sidecars on loopback, live
traffic with a canary shift, and where to look.

    load ─> [frontend sidecar] ─> frontend ─> [frontend sidecar, outbound: Host backend]
              ═mTLS═> 80% [backend-v1 sidecar] ─> backend v1
              ═mTLS═> 20% [backend-v2 sidecar] ─> backend v2     (then 50/50, live)

Sidecars talk mTLS (STRICT, the Mesh's default); the load generator has no sidecar, so the
frontend's port is PERMISSIVE (a MutualTLSPolicy in loopback_mesh.yaml).  At the end the demo shows
how each sidecar's inbound port took its connections (filter chain `mtls` or `plaintext`).

Everything is a real process on 127.0.0.1 with free ports: `tulle control-plane run` on a
SQLite file, three sample apps, three `tulle proxy run --control-plane` sidecars that register
their workloads themselves (each with a bootstrap token from `tulle token issue`).
Resources are applied with `tulle apply` (loopback_mesh.yaml).  Traffic
is bounded: `--duration` seconds (60 when 0) at `--rps`; halfway through, the canary
weights change and the split follows.  Every process is stopped on exit (also on Ctrl-C and
SIGTERM), and follows the demo if it is killed outright (a parent-death signal, ADR 0105).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tulle.net.ports import unused_port

HERE = Path(__file__).resolve().parent
PY = sys.executable
TULLE = [PY, "-m", "tulle.cli.main"]
APPS = [PY, "-m", "tulle.demo.loopback_apps"]
SRC = str(HERE.parents[1])
"""The directory holding the `tulle` package, for the processes this demo starts."""
NS = "demo"


def _follow_parent(parent: int) -> None:
    """In a child, before exec: SIGTERM when the demo dies, even by SIGKILL (Linux).

    The children run in sessions of their own (so a Ctrl-C reaches only the demo, which stops
    them in order); without this, a killed demo left its control plane, apps and sidecars
    running for ever, and nothing at the next start knew them (hygiene audit, ADR 0105).
    Only prctl and getppid run here, no lock is taken, so the demo's threads cannot deadlock
    the fork.  A demo that died before prctl took effect is seen by getppid: exit at once."""
    if not sys.platform.startswith("linux"):
        return
    _PRCTL(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG, kept across exec
    if os.getppid() != parent:
        os._exit(0)


_PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
"""Looked up before any fork: a dlsym in the child could take the loader's lock."""


def free_port() -> int:
    return unused_port()  # (not port 0's pick: see tulle.net.ports)


class Demo:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tulle-demo-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api = free_port()
        self.stream = free_port()
        # TULLE_STORE names the control plane's store, so `tulle` finds the admin token the
        # control plane writes next to it (tulle.db.admin-token): nobody copies tokens.
        self.env = {**os.environ, "PYTHONPATH": SRC,
                    "TULLE_SERVER": f"http://127.0.0.1:{self.api}",
                    "TULLE_STORE": f"sqlite:{self.tmp / 'tulle.db'}"}

    def start(self, args: list[str], log: str) -> None:
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - lives as long as the process
        parent = os.getpid()
        self.procs.append(subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
            preexec_fn=lambda: _follow_parent(parent)))  # noqa: PLW1509 - see _follow_parent

    def tulle(self, *args: str) -> str:
        res = subprocess.run([*TULLE, *args], capture_output=True, text=True, env=self.env,
                             timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"tulle {' '.join(args)} failed:\n{res.stderr}")
        return res.stdout

    def sidecar(self, workload: str, labels: dict[str, str], port: int, app_port: int,
                outbound: int, admin: int) -> None:
        args = [*TULLE, "proxy", "run", "--control-plane", f"127.0.0.1:{self.stream}",
                "--workload", workload, "-n", NS, "--address", "127.0.0.1",
                "--port", f"http:{port}:{app_port}", "--outbound-port", str(outbound),
                "--admin-port", str(admin), "--cache-dir", str(self.tmp / "cache")]
        token_args = ["token", "issue", "--workload", workload, "-n", NS]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
            token_args += ["--label", f"{k}={v}"]
        # A single-use bootstrap token (ADR 0028), handed over in a 0600 file, not argv.
        token_file = self.tmp / f"{workload}.token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.tulle(*token_args))
        self.start([*args, "--token-file", str(token_file)], f"{workload}-sidecar.log")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                # Bounded: a process stuck in the kernel must not hang the demo's exit.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)


def canary(v1: int, v2: int) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "backend-canary", "namespace": NS},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "backend",
                                     "port": 80}],
                     "rules": [{"backendRefs": [{"name": "backend-v1", "port": 80, "weight": v1},
                                                {"name": "backend-v2", "port": 80,
                                                 "weight": v2}]}]}}


async def wait_ok(url: str, timeout: float = 20.0, host: str | None = None) -> None:
    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end:
            try:
                async with s.get(url, headers={"Host": host} if host else None) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def load(demo: Demo, url: str, seconds: float, rps: int, admin: int) -> None:
    codes: dict[int, int] = {}
    versions: dict[str, int] = {}
    window: list[tuple[float, str]] = []
    start = time.monotonic()
    shifted = False
    async with aiohttp.ClientSession() as s:
        async def one() -> None:
            t0 = time.monotonic()
            version = "-"
            try:
                async with s.get(url) as r:
                    body = await r.json() if r.status == 200 else {}
                    codes[r.status] = codes.get(r.status, 0) + 1
                    version = (body.get("backend") or {}).get("version", "-")
            except (aiohttp.ClientError, ValueError):
                codes[0] = codes.get(0, 0) + 1
            versions[version] = versions.get(version, 0) + 1
            window.append(((time.monotonic() - t0) * 1000, version))

        tasks: set[asyncio.Task[None]] = set()
        sent = 0
        next_report = start + 1
        while time.monotonic() - start < seconds:
            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
            now = time.monotonic()
            if not shifted and now - start >= seconds / 2:
                shifted = True
                (demo.tmp / "canary-50.yaml").write_text(yaml.safe_dump(canary(50, 50)))
                print("\n  >>> tulle apply -f canary-50.yaml   (backend-v1 50 / backend-v2 50)\n",
                      flush=True)
                await asyncio.to_thread(demo.tulle, "apply", "-f", str(demo.tmp / "canary-50.yaml"))
            if now >= next_report:
                next_report += 1
                recent, window[:] = window[:], []
                lat = sorted(x for x, _ in recent) or [0.0]
                v2 = sum(1 for _, v in recent if v == "v2")
                try:
                    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                        text = await r.text()
                except aiohttp.ClientError:
                    text = ""
                print(f"  t={now - start:4.0f}s  ok={codes.get(200, 0):5d}  errors="
                      f"{sum(v for k, v in codes.items() if k != 200):3d}  "
                      f"p50={lat[len(lat) // 2]:6.2f} ms  p99={lat[int(len(lat) * 0.99)]:6.2f} ms"
                      f"  v2 share={100 * v2 / max(1, len(recent)):3.0f}%  | frontend sidecar "
                      f"outbound: {metric_sum(text, 'tulle_proxy_requests_total', listener='outbound'):.0f}",
                      flush=True)
            await asyncio.sleep(max(0.0, start + sent / rps - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=5)
    print(f"\nsent {sum(codes.values())} requests: "
          + ", ".join(f"{k or 'connection error'}: {v}" for k, v in sorted(codes.items()))
          + "; served by " + ", ".join(f"{k}: {v}" for k, v in sorted(versions.items())))


async def show_mtls(p: dict[str, int]) -> None:
    """How each sidecar's inbound port took its connections: filter chain `mtls` (a sidecar
    with a mesh certificate) or `plaintext` (the load generator, frontend only)."""
    print("\nmTLS (ADR 0033): connections per inbound filter chain")
    async with aiohttp.ClientSession() as s:
        for name, admin in (("frontend-0", p["fe_admin"]), ("backend-v1-0", p["v1_admin"]),
                            ("backend-v2-0", p["v2_admin"])):
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                text = await r.text()
            mtls = metric_sum(text, "tulle_proxy_protocol_detected_total", protocol="chain:mtls")
            plain = metric_sum(text, "tulle_proxy_protocol_detected_total",
                               protocol="chain:plaintext")
            refused = metric_sum(text, "tulle_proxy_protocol_errors_total",
                                 kind="no_filter_chain")
            print(f"  {name:13s} mtls={mtls:4.0f}  plaintext={plain:4.0f}  "
                  f"closed (no chain)={refused:3.0f}")


async def main(seconds: float, rps: int) -> int:
    demo = Demo()
    p = {k: free_port() for k in ("fe_app", "v1_app", "v2_app", "fe_in", "v1_in", "v2_in",
                                   "fe_out", "v1_out", "v2_out", "fe_admin", "v1_admin",
                                   "v2_admin")}
    try:
        demo.start([*TULLE, "control-plane", "run", "--store", f"sqlite:{demo.tmp / 'tulle.db'}",
                    "--api-port", str(demo.api), "--stream-port", str(demo.stream)],
                   "control-plane.log")
        await wait_ok(f"http://127.0.0.1:{demo.api}/readyz")
        (demo.tmp / "canary.yaml").write_text(yaml.safe_dump(canary(80, 20)))
        print(demo.tulle("apply", "-f", str(HERE / "loopback_mesh.yaml"),
                         "-f", str(demo.tmp / "canary.yaml")).rstrip())
        demo.start([*APPS, "backend", str(p["v1_app"]), "v1"],
                   "backend-v1.log")
        demo.start([*APPS, "backend", str(p["v2_app"]), "v2"],
                   "backend-v2.log")
        demo.start([*APPS, "frontend", str(p["fe_app"]),
                    f"http://127.0.0.1:{p['fe_out']}"], "frontend.log")
        demo.sidecar("frontend-0", {"app": "frontend"}, p["fe_in"], p["fe_app"], p["fe_out"],
                     p["fe_admin"])
        demo.sidecar("backend-v1-0", {"app": "backend", "version": "v1"}, p["v1_in"],
                     p["v1_app"], p["v1_out"], p["v1_admin"])
        demo.sidecar("backend-v2-0", {"app": "backend", "version": "v2"}, p["v2_in"],
                     p["v2_app"], p["v2_out"], p["v2_admin"])
        await wait_ok(f"http://127.0.0.1:{p['fe_in']}/healthz")
        await wait_ok(f"http://127.0.0.1:{p['fe_in']}/")
        print(f"""
Tulle demo — control plane http://127.0.0.1:{demo.api} (store {demo.tmp / 'tulle.db'})
  load ─> frontend sidecar :{p['fe_in']} ─> frontend :{p['fe_app']}
       ─> frontend sidecar outbound :{p['fe_out']} (Host: backend)
       ─> backend-v1 sidecar :{p['v1_in']} ─> backend v1 :{p['v1_app']}
       ─> backend-v2 sidecar :{p['v2_in']} ─> backend v2 :{p['v2_app']}

Where to look while it runs ({seconds:.0f} s at {rps} rps), in another shell:
  export TULLE_SERVER=http://127.0.0.1:{demo.api} TULLE_STORE=sqlite:{demo.tmp / 'tulle.db'}
  .venv/bin/tulle get proxies                       # who is connected, which version they ACKed
  .venv/bin/tulle get services -n {NS}              # with the virtual IPs the control plane gave them
  .venv/bin/tulle get workloads -n {NS} -o wide     # registered by the sidecars themselves
  .venv/bin/tulle describe httproute backend-canary -n {NS}
  .venv/bin/tulle proxy-config frontend-0 -n {NS} routes
  .venv/bin/tulle stat svc -n {NS} --watch         # rps, success rate, p50/p95/p99 per Service
  .venv/bin/tulle stat workload/frontend-0 -n {NS} -o wide   # and its edges to each Service
  curl -s http://127.0.0.1:{p['fe_admin']}/metrics | grep tulle_proxy_requests_total
  curl -s -H "Authorization: Bearer $(cat {demo.tmp / 'tulle.db.admin-token'})" \\
      http://127.0.0.1:{demo.api}/openapi.json | head -c 300
  .venv/bin/tulle api-token create --role read-only # a token for someone who only looks
  logs: {demo.tmp}
""", flush=True)
        await load(demo, f"http://127.0.0.1:{p['fe_in']}/", seconds, rps, p["fe_admin"])
        await show_mtls(p)
        print(f"\n$ tulle get mutualtlspolicies -n {NS}")
        print(demo.tulle("get", "mutualtlspolicies", "-n", NS).rstrip())
        print("\n$ tulle get proxies")
        print(demo.tulle("get", "proxies").rstrip())
        print(f"\n$ tulle proxy-config frontend-0 -n {NS} routes")
        print(demo.tulle("proxy-config", "frontend-0", "-n", NS, "routes").rstrip())
        return 0
    finally:
        demo.stop()
        print(f"\nstopped {len(demo.procs)} processes; logs kept in {demo.tmp}")


def run_loopback(duration: float, rps: float) -> int:
    """`tulle demo` without namespaces: `duration` seconds (60 when 0) at `rps`.

    SIGTERM ends it as Ctrl-C does, through `main`'s clean-up: by default it ended the
    interpreter at once, and every process the demo had started stayed (ADR 0105)."""
    old = signal.signal(signal.SIGTERM, lambda _s, _f: signal.raise_signal(signal.SIGINT))
    try:
        return asyncio.run(main(duration or 60.0, max(1, int(rps))))
    except KeyboardInterrupt:  # `main` stopped every process on its way out
        return 130
    except (OSError, RuntimeError) as exc:  # a process that cannot start, a failed command
        print(f"tulle demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
