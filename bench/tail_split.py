"""Where a two-hop p99 at 1,000 req/s comes from: requests that met another request in flight
against requests that had the path to themselves (ADR 0067).

    python -m bench.tail_split --rounds 3 --duration 4

At a fixed rate the two proxies of a pair share one CPU (`PROXY_CPU`).  A request that is sent
while another is still in flight waits for that one's processing on the proxy CPU: its extra
latency is the proxies' own CPU per request (queueing), and it grows with that CPU.  A request
with the path to itself (no other request in flight at any moment of its life) waits for
nothing of ours: what it adds above its pair's p50 is the machine's scheduling (wake-ups, other
processes, the VM).  So the p99 of the *alone* requests is the part of the tail a proxy cannot
cut by spending less CPU, and the gap between the *alone* and the *overlapped* requests is
the part it can.

The load is `bench.loadgen`'s timetable (10 keep-alive connections, request *i* due at
t0 + i / rate) in a child process on `LOAD_CPU`, which also records when each request was sent
and answered; the peers (`direct` to the origin, `tulle-mtls`, `tulle-2hop`, `haproxy-tls`, as
in `bench.run`) all run at once and are loaded in turn, rotating the order each round.  Per
peer: the share of requests that overlapped, p50 / p99 (ms) of the alone and of the overlapped
requests and of all, and the proxies' CPU per request.  Latency on a busy machine is noise;
run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import BODY_PATH, LOAD_CPU, Running, start_origin
from bench.procs import ProcessSet, cpu_seconds

PEERS = ("direct", "tulle-mtls", "tulle-2hop", "haproxy-tls")


def split(spans: list[tuple[float, float, float]]) -> dict[str, Any]:
    """`spans`: (sent, answered, latency) per request.  A request is *alone* when no other
    request's span overlaps its own."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    alone: list[float] = []
    overlapped: list[float] = []
    reach = float("-inf")  # the latest answer among requests sent before this one
    for n, i in enumerate(order):
        sent, done, lat = spans[i]
        nxt = spans[order[n + 1]][0] if n + 1 < len(order) else float("inf")
        (alone if reach < sent and nxt > done else overlapped).append(lat)
        reach = max(reach, done)

    def pct(v: list[float]) -> dict[str, float]:
        if not v:
            return {}
        s = sorted(v)
        return {"p50": round(s[len(s) // 2] * 1e3, 4),
                "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, 4), "n": len(s)}

    every = [s[2] for s in spans]
    return {"overlapped_share": round(len(overlapped) / max(1, len(spans)), 3),
            "alone": pct(alone), "overlapped": pct(overlapped), "all": pct(every)}


def _child(port: int, rate: float, duration: float, warmup: float, conns: int,
           pacing: str) -> None:
    import asyncio

    import uvloop

    from bench import loadgen

    spans: list[tuple[float, float, float]] = []

    class Recording(loadgen.Client):
        def on_message_complete(self) -> None:
            t = loadgen.perf()
            if self.ref >= self.run.record_from:
                spans.append((self.sent_at, t, t - self.ref))
            super().on_message_complete()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        request = (f"GET {BODY_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   "User-Agent: tulle-bench\r\nAccept: */*\r\n\r\n").encode()
        run = loadgen.Run(rate, warmup, duration, conns, request)
        clients = await loadgen.connect(run, loop, "127.0.0.1", port, Recording)
        run.done = loop.create_future()
        run.t0 = loadgen.perf() + 0.01
        run.record_from = run.t0 + warmup
        loadgen.start(run, clients, loop, pacing)
        await asyncio.wait_for(run.done, warmup + duration + 5)
        run.stopped = True
        for c in clients:
            if c.transport is not None:
                c.transport.close()

    uvloop.run(go())
    json.dump({"split": split(spans), "completed": len(spans)}, sys.stdout)


def _load(r: Running, args: argparse.Namespace, pacing: str) -> dict[str, Any]:
    c0 = cpu_seconds(r.pids)[0] if r.pids else 0.0
    out = subprocess.run(
        ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "bench.tail_split", "--child",
         str(r.port), "--rate", str(args.rate), "--duration", str(args.duration),
         "--warmup", str(args.warmup), "--pacing", pacing], capture_output=True, text=True, check=True)
    res: dict[str, Any] = json.loads(out.stdout)
    if r.pids:
        res["cpu_us_per_req"] = round(
            (cpu_seconds(r.pids)[0] - c0) * 1e6 / max(1, res["completed"]), 1)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--pacing", default="thread",
                    help="the load generator's pacing, `thread` or `timer` (bench.loadgen), or "
                         "both comma-separated: every peer loaded with each, in every round")
    ap.add_argument("--child", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.rate, args.duration, args.warmup, 10, args.pacing)
        return
    from bench.mtls_peers import MTLS_STARTERS

    names = args.peers.split(",")
    with tempfile.TemporaryDirectory() as tmp, ProcessSet(Path(tmp)) as ps:
        Path(tmp).chmod(0o755)
        origin = start_origin(ps)
        peers = {n: (Running("direct", origin.port, None, []) if n == "direct"
                     else MTLS_STARTERS[n](ps, origin.port, "http1")) for n in names}
        pacings = args.pacing.split(",")
        keys = [f"{n}/{p}" if len(pacings) > 1 else n for p in pacings for n in names]
        rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        for k in range(args.rounds):
            for key in keys[k % len(keys):] + keys[:k % len(keys)]:
                n, _, pacing = key.partition("/")
                res = _load(peers[n], args, pacing or pacings[0])
                rounds[key].append(res)
                s = res["split"]
                print(f"round {k} {key:18s} overlapped {s['overlapped_share']:.3f}  "
                      f"alone p50/p99 {s['alone'].get('p50')}/{s['alone'].get('p99')} ms  "
                      f"overlapped p50/p99 {s['overlapped'].get('p50')}/"
                      f"{s['overlapped'].get('p99')} ms  all p99 {s['all'].get('p99')} ms  "
                      f"cpu {res.get('cpu_us_per_req', '-')} us/req", flush=True)
        print("median of the rounds (min-max):")
        for n, rs in rounds.items():
            row = []
            for label, get in (("overlapped share", lambda r: r["split"]["overlapped_share"]),
                               ("alone p99", lambda r: r["split"]["alone"].get("p99", 0.0)),
                               ("overlapped p99",
                                lambda r: r["split"]["overlapped"].get("p99", 0.0)),
                               ("all p99", lambda r: r["split"]["all"]["p99"]),
                               ("all p50", lambda r: r["split"]["all"]["p50"]),
                               ("cpu us/req", lambda r: r.get("cpu_us_per_req", 0.0))):
                v = [get(r) for r in rs]
                row.append(f"{label} {statistics.median(v):g} ({min(v):g}-{max(v):g})")
            print(f"  {n:18s} " + "; ".join(row))


if __name__ == "__main__":
    main()
