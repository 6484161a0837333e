"""How long one `tulle apply` holds up the rest of the control plane (ADR 0128).

Apply compiles the documents over the whole mesh before it writes them (its warnings, ADR 0024)
and, while a proxy of an older build is connected, renders some proxies' snapshots too (ADR
0125).  This measures what the other users of the control plane's event loop see meanwhile,
on a real `tulle control-plane run` (SQLite) with the mesh of `controlplane_scale.py` (N
Services, each with a workload and an HTTPRoute):

- `/healthz`: a GET every 10 ms (one at a time) from the start of the apply to its answer;
- a stream client's round trip: a `Ping` every 10 ms on a subscribed proxy's stream, to its
  `Pong` (read and answered by the same session code as an ACK);
- the control plane's RSS once the mesh settled, at the end, and its peak over the rounds;
- a push to another proxy: in a second run of the same apply, 100 ms into it, a workload is
  deleted over the REST API (no apply, no preview), and the time to that proxy's next frame
  is taken, next to the same delete with no apply running ("push alone");
- during that push alone, a plain change: the same two samplers, from 200 ms before the delete
  to 300 ms after the frame (the reconciler's compilation, the swap and its status writes;
  on a worker thread since ADR 0133, on the loop before).

The apply is one HTTPRoute made sticky (`sessionPersistence`), as a dry run (the store and
the proxies are left as they were, so rounds repeat), and `--docs-per-apply K` adds K-1
edits of other routes to it.  `--older` connects that many stream clients announcing the
features of a build without `session-persistence` (the skew check renders for them).

    nice -n 19 .venv/bin/python -m bench.controlplane_apply_block --services 2000 \
        [--older 1] [--rounds 3] [--cp-src PATH]

`--cp-src` runs the control plane from another source tree (before/after comparisons).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from bench.controlplane import (
    API,
    NS,
    TULLE,
    Fleet,
    SimProxy,
    address,
    service_doc,
    stream_client_context,
    wait_until,
    workload_doc,
)
from bench.controlplane_scale import route_doc
from bench.procs import ProcessSet, RssSampler, cpu_seconds, free_port, rss_bytes, wait_port
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import Ping, WorkloadInfo, encode

PING = encode(Ping())
WITHOUT_STICKY = [f for f in SUPPORTED if f != "session-persistence"]
SAMPLE_EVERY = 0.010


class Probe(SimProxy):
    """A light proxy that also times a Ping to its Pong and notes when config frames come."""

    __slots__ = ("frame_at", "pong")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pong = asyncio.Event()
        self.frame_at = 0.0

    def _frame(self) -> None:
        head = bytes(self.buf[4:40])
        if head.startswith(b'{"type":"pong"'):
            self.buf.clear()
            self.size = -1
            self.pong.set()
            return
        if head.startswith((b'{"type":"snapshot"', b'{"type":"delta"')):
            self.frame_at = time.perf_counter()
        super()._frame()


async def subscribe(api: API, name: str, i: int, port: int,
                    features: list[str] | None = None) -> tuple[Probe, Fleet]:
    fleet = Fleet()
    token = await api.token(name)
    p = Probe(fleet, WorkloadInfo(name=name, namespace=NS, address=address(i)), token=token,
              csr=WorkloadKey().csr(NS, name), features=features)
    fleet.proxies = [p]
    fleet.mark()
    ctx = await stream_client_context(token, port)
    await asyncio.get_running_loop().create_connection(
        partial(lambda x: x, p), "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    if await fleet.wait(120):
        raise RuntimeError(f"{name}: no snapshot")
    return p, fleet


def sticky(name: str, parent: str) -> dict[str, Any]:
    doc = route_doc(name, parent, parent)
    doc["spec"]["rules"][0]["sessionPersistence"] = {"sessionName": "sid"}
    return doc


async def healthz_samples(s: aiohttp.ClientSession, base: str, stop: asyncio.Event,
                          out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        async with s.get(f"{base}/healthz") as r:
            await r.read()
        out.append(time.perf_counter() - t)
        await asyncio.sleep(SAMPLE_EVERY)


async def ping_samples(p: Probe, stop: asyncio.Event, out: list[float]) -> None:
    assert p.transport is not None
    while not stop.is_set():
        p.pong.clear()
        t = time.perf_counter()
        p.transport.write(PING)
        await asyncio.wait_for(p.pong.wait(), 120)
        out.append(time.perf_counter() - t)
        await asyncio.sleep(SAMPLE_EVERY)


def summary(values: list[float]) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {"n": 0}
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1),
            "max_ms": round(ms[-1], 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tulle-bench-apply-block-"))
    out: dict[str, Any] = {"services": args.services, "older": args.older,
                           "docs_per_apply": args.docs_per_apply,
                           "cp_src": args.cp_src or "(this tree)"}
    env = dict(os.environ)
    if args.cp_src:
        env["PYTHONPATH"] = args.cp_src
    with ProcessSet(tmp) as procs:
        api_port, stream_port = free_port(), free_port()
        cp = procs.start("control-plane", [
            TULLE, "control-plane", "run", "--store", f"sqlite:{tmp / 'cp.db'}",
            "--api-port", str(api_port), "--stream-port", str(stream_port),
            "--log-level", "warning"], env=env)
        await asyncio.to_thread(wait_port, api_port, cp, 60.0)
        token = (tmp / "cp.db.admin-token").read_text().strip()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900),
                                         headers={"Authorization": f"Bearer {token}"}) as s:
            api = API(s, f"http://127.0.0.1:{api_port}")
            await wait_until("the API", api.ready, 60, 0.1)
            docs: list[dict[str, Any]] = [workload_doc("client", "client", 60000)]
            for i in range(args.services):
                docs += [service_doc(f"svc-{i}"), workload_doc(f"w-{i}", f"svc-{i}", i),
                         route_doc(f"r-{i}", f"svc-{i}", f"svc-{i}")]
            t0 = time.perf_counter()
            for i in range(0, len(docs), 1500):
                await api.apply(*docs[i:i + 1500])
            out["setup_s"] = round(time.perf_counter() - t0, 1)
            probe, fleet = await subscribe(api, "client", 60000, stream_port)
            older = [await subscribe(api, f"w-{i + 1}", i + 1, stream_port, WITHOUT_STICKY)
                     for i in range(args.older)]

            async def settled() -> bool:
                rows = {r["name"]: r for r in await api.proxies()}
                return all(rows[n].get("ackedVersion") == rows[n]["desiredVersion"]
                           for n in ["client", *(f"w-{i + 1}" for i in range(args.older))])

            async def quiet() -> None:
                await wait_until("the subscribers settled", settled, 600, 0.5)
                await asyncio.sleep(2.0)

            await quiet()
            cpu_pid = cp.pid
            out["cp_rss_mb_settled"] = round(rss_bytes([cpu_pid]) / 2**20)
            peak = RssSampler([cpu_pid])
            peak.start()
            apply_docs = [sticky("r-0", "svc-0")] + [
                route_doc(f"r-{i}", f"svc-{i}", f"svc-{(i + 1) % args.services}")
                for i in range(1, args.docs_per_apply)]
            rounds: list[dict[str, Any]] = []
            for k in range(args.rounds):
                # The push baseline: a workload deleted with nothing else running.
                await api.apply(workload_doc(f"extra-{k}a", "svc-0", 59000 + 2 * k),
                                workload_doc(f"extra-{k}b", "svc-0", 59001 + 2 * k))
                await quiet()
                stop = asyncio.Event()
                change_hz: list[float] = []
                change_pings: list[float] = []
                samplers = [asyncio.ensure_future(healthz_samples(s, api.base, stop,
                                                                  change_hz)),
                            asyncio.ensure_future(ping_samples(probe, stop, change_pings))]
                await asyncio.sleep(0.2)
                probe.frame_at = 0.0
                t = time.perf_counter()
                await api.delete("workloads", f"extra-{k}a")
                await wait_until("the probe's frame", partial(_got, probe), 120, 0.005)
                push_alone = probe.frame_at - t
                await asyncio.sleep(0.3)
                stop.set()
                await asyncio.gather(*samplers)
                await quiet()
                # The apply alone, with the samplers.
                stop = asyncio.Event()
                hz: list[float] = []
                pings: list[float] = []
                samplers = [asyncio.ensure_future(healthz_samples(s, api.base, stop, hz)),
                            asyncio.ensure_future(ping_samples(probe, stop, pings))]
                await asyncio.sleep(0.2)
                hz.clear()
                pings.clear()
                c0 = cpu_seconds([cpu_pid])[0]
                t = time.perf_counter()
                body = await dry_apply(s, api.base, apply_docs)
                apply_s = time.perf_counter() - t
                cpu = cpu_seconds([cpu_pid])[0] - c0
                stop.set()
                await asyncio.gather(*samplers)
                await quiet()
                # The same apply, with the delete 100 ms into it.
                call = asyncio.ensure_future(dry_apply(s, api.base, apply_docs))
                await asyncio.sleep(0.1)
                probe.frame_at = 0.0
                d = time.perf_counter()
                await asyncio.gather(api.delete("workloads", f"extra-{k}b"), call)
                await wait_until("the probe's frame", partial(_got, probe), 120, 0.005)
                push_during = probe.frame_at - d
                warned = [w for x in body["results"] for w in x.get("warnings", [])]
                rounds.append({"apply_ms": round(apply_s * 1000), "cp_cpu_s": round(cpu, 2),
                               "healthz": summary(hz), "ping": summary(pings),
                               "change_healthz": summary(change_hz),
                               "change_ping": summary(change_pings),
                               "push_alone_ms": round(push_alone * 1000),
                               "push_during_apply_ms": round(push_during * 1000),
                               "warnings": len(warned)})
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
                await quiet()
            out["rounds"] = rounds
            peak.stop()
            out["cp_rss_mb_end"] = round(rss_bytes([cpu_pid]) / 2**20)
            out["cp_rss_mb_peak_rounds"] = round(peak.peak / 2**20)
            out["errors"] = [e for f in [fleet, *(f for _, f in older)] for e in f.errors
                             if "stats-request" not in e][:3]
    return out


async def dry_apply(s: aiohttp.ClientSession, base: str,
                    docs: list[dict[str, Any]]) -> dict[str, Any]:
    async with s.post(f"{base}/api/v1/apply", params={"dryRun": "true"},
                      json={"documents": docs}) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        return body


async def _got(p: Probe) -> bool:
    return p.frame_at > 0.0


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--services", type=int, default=2000)
    ap.add_argument("--older", type=int, default=0,
                    help="stream clients announcing a build without session-persistence")
    ap.add_argument("--docs-per-apply", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cp-src", default="", help="PYTHONPATH of the control plane")
    args = ap.parse_args(argv)
    import uvloop

    print(json.dumps(uvloop.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
