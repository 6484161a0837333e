"""The control plane at N Services, each with a workload and an HTTPRoute (ADR 0109).

What `bench/controlplane.py` (2,000 proxies, one mesh size) does not show: how the cost of a
bulk apply and of one small change grows with the mesh.  One `tulle control-plane run`
(SQLite), one light subscriber (`bench.controlplane.SimProxy`, a client workload of its
own), then:

1. the Services, workloads and routes applied in batches (`--batch` documents per call);
   the time from the first apply to the subscriber's last frame once everything settled
   (its ACKed version equals the desired one and nothing new arrives for 2 s), with CP CPU;
2. a second subscriber's first full snapshot (bytes on the wire);
3. one small change each (a workload added to one Service; one route edited): time to the
   subscriber's frame, its bytes, CP CPU;
4. peak CP RSS, the store file's size, one unpaged `GET /api/v1/resources/services`.

Not run by the tests (sizes of thousands take minutes); the tests hold the shapes at small
sizes (`tests/unit/controlplane/test_reconcile_status_writes.py`).

    .venv/bin/python -m bench.controlplane_scale --services 1000 [--batch 1500]
"""
from __future__ import annotations

import argparse
import asyncio
import json
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
from bench.procs import ProcessSet, RssSampler, cpu_seconds, free_port, wait_port
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.stream import WorkloadInfo


def route_doc(name: str, parent: str, backend: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent,
                                     "port": 80}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                                "backendRefs": [{"name": backend, "port": 80}]}]}}


class Sim(SimProxy):
    """A `SimProxy` that also notes when its last config frame came, and its size."""

    __slots__ = ("last_at", "last_bytes")

    def _frame(self) -> None:
        if b'"snapshot"' in self.buf[:40] or b'"delta"' in self.buf[:40]:
            self.last_at = time.perf_counter()
            self.last_bytes = 4 + self.size
        super()._frame()


async def subscribed(api: API, name: str, i: int, port: int) -> tuple[Sim, Fleet]:
    fleet = Fleet()
    token = await api.token(name)
    p = Sim(fleet, WorkloadInfo(name=name, namespace=NS, address=address(i)), token=token,
            csr=WorkloadKey().csr(NS, name))
    fleet.proxies = [p]
    fleet.mark()
    ctx = await stream_client_context(token, port)
    await asyncio.get_running_loop().create_connection(
        partial(lambda x: x, p), "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    await fleet.wait(60)
    return p, fleet


async def run(services: int, batch: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tulle-bench-cp-scale-"))
    out: dict[str, Any] = {"services": services}
    with ProcessSet(tmp) as procs:
        api_port, stream_port = free_port(), free_port()
        cp = procs.start("control-plane", [
            TULLE, "control-plane", "run", "--store", f"sqlite:{tmp / 'cp.db'}",
            "--api-port", str(api_port), "--stream-port", str(stream_port),
            "--log-level", "warning"])
        await asyncio.to_thread(wait_port, api_port, cp, 30.0)
        rss = RssSampler([cp.pid])
        rss.start()
        token = (tmp / "cp.db.admin-token").read_text().strip()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                         headers={"Authorization": f"Bearer {token}"}) as s:
            api = API(s, f"http://127.0.0.1:{api_port}")
            await wait_until("the API", api.ready, 30, 0.1)
            await api.apply(workload_doc("client", "client", 60000))
            p, fleet = await subscribed(api, "client", 60000, stream_port)
            docs: list[dict[str, Any]] = []
            for i in range(services):
                docs += [service_doc(f"svc-{i}"), workload_doc(f"w-{i}", f"svc-{i}", i),
                         route_doc(f"r-{i}", f"svc-{i}", f"svc-{i}")]
            cpu0, t0 = cpu_seconds([cp.pid])[0], time.perf_counter()
            applies = []
            for i in range(0, len(docs), batch):
                a = time.perf_counter()
                await api.apply(*docs[i:i + batch])
                applies.append(round((time.perf_counter() - a) * 1000))
            applied = time.perf_counter()

            async def settled() -> bool:
                async with s.get(f"{api.base}/api/v1/proxies") as r:
                    rows = (await r.json())["items"]
                me = next(x for x in rows if x["name"] == "client")
                return (bool(me.get("ackedVersion"))
                        and me.get("ackedVersion") == me["desiredVersion"]
                        and len(rows) >= services + 1
                        and all(x.get("desiredVersion") for x in rows))

            while True:
                await wait_until("the subscriber settled", settled, 600, 0.5)
                seen = p.versions
                await asyncio.sleep(2.0)
                if p.versions == seen and await settled():
                    break
            out["apply_calls_ms"] = applies
            out["apply_to_last_frame_s"] = round(p.last_at - t0, 2)
            out["last_apply_to_last_frame_s"] = round(p.last_at - applied, 2)
            out["setup_cp_cpu_s"] = round(cpu_seconds([cp.pid])[0] - cpu0, 2)
            p2, fleet2 = await subscribed(api, "w-0", 0, stream_port)
            out["full_snapshot_bytes"] = p2.first_bytes
            for label, doc in (("add a workload to svc-0",
                                workload_doc("extra", "svc-0", 59000)),
                               ("edit route r-1", route_doc("r-1", "svc-1", "svc-0"))):
                await asyncio.sleep(1.0)
                fleet.mark()
                fleet2.mark()
                c0, t = cpu_seconds([cp.pid])[0], time.perf_counter()
                await api.apply(doc)
                call = time.perf_counter() - t
                await fleet.wait(60)
                await fleet2.wait(60)
                await asyncio.sleep(1.0)
                out[label] = {"apply_ms": round(call * 1000),
                              "to_subscriber_ms": round((p.first_at - t) * 1000),
                              "bytes": p.change_bytes,
                              "cp_cpu_s": round(cpu_seconds([cp.pid])[0] - c0, 2)}
            rss.stop()
            out["cp_rss_mb_peak"] = round(rss.peak / 2**20)
            out["store_bytes"] = sum(f.stat().st_size for f in tmp.glob("cp.db*"))
            t = time.perf_counter()
            async with s.get(f"{api.base}/api/v1/resources/services",
                             params={"namespace": NS}) as r:
                body = await r.read()
            out["list_services_ms"] = round((time.perf_counter() - t) * 1000)
            out["list_services_bytes"] = len(body)
            out["subscriber_errors"] = [e for e in fleet.errors + fleet2.errors
                                        if "stats-request" not in e][:3]
    return out


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1500, help="documents per apply request")
    args = ap.parse_args(argv)
    import uvloop

    print(json.dumps(uvloop.run(run(args.services, args.batch)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
