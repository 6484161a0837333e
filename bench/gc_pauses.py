"""How often the garbage collector runs in the two mTLS proxies under load, and for how long.

    python -m bench.gc_pauses --seconds 6 --rate 1000

Starts the origin and the `tulle-mtls` pair of `bench/mtls_peers.py` (client proxy -> mTLS ->
server proxy -> origin, proxies on CPU 0), each proxy through the real entry point with a
`gc.callbacks` hook that times every collection; loads the pair at a fixed rate with
`bench.loadgen`; stops the proxies (SIGTERM, drained) and prints, per proxy, the collections
during start-up and those while loaded, by generation, with their pause times.  The question
it answers (ADR 0063): is a gc pause frequent enough to be in the p99 of the two hops?
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import mtls_peers as mp
from bench.peers import PROXY_CPU, start_origin
from bench.procs import ProcessSet, free_port, wait_port
from bench.tools import run_loadgen

DRIVER = """\
import atexit, gc, json, sys, time
out, loaded_from = sys.argv[1], sys.argv[2]
start = {}
seen = {"startup": [[], [], []], "loaded": [[], [], []]}
def hook(phase, info):
    if phase == "start":
        start["t"] = time.perf_counter()
        return
    phase_name = "loaded" if __import__("os").path.exists(loaded_from) else "startup"
    seen[phase_name][info["generation"]].append((time.perf_counter() - start["t"]) * 1e6)
gc.callbacks.append(hook)
def dump():
    with open(out, "w") as f:
        json.dump(seen, f)
atexit.register(dump)
sys.argv = ["tulle", *sys.argv[3:]]
from tulle.cli.main import main
main()
"""


def _summary(pauses: list[list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gen, p in enumerate(pauses):
        s = sorted(p)
        out[f"gen{gen}"] = {"count": len(s),
                            "median_us": round(s[len(s) // 2], 1) if s else None,
                            "max_us": round(s[-1], 1) if s else None}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tulle-bench-gc-"))
    tmp.chmod(0o755)  # nginx workers drop privileges and must read the origin's file
    marker = tmp / "loaded"
    try:
        result = _run(args, tmp, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))


def _run(args: argparse.Namespace, tmp: Path, marker: Path) -> dict[str, Any]:
    with ProcessSet(tmp) as ps:
        origin = start_origin(ps)

        def start(name: str, cfg: dict[str, object], port: int) -> Any:
            conf = tmp / f"{name}.json"
            conf.write_text(json.dumps(cfg))
            conf.chmod(0o600)  # holds a private key
            proc = ps.start(name, [sys.executable, "-c", DRIVER, str(tmp / f"{name}.gc.json"),
                                   str(marker), "proxy", "run", "--config", str(conf),
                                   "--watch-interval", "0", "--log-level", "warning"],
                            cpu=PROXY_CPU, env=dict(os.environ))
            wait_port(port, proc)
            return proc

        sport, cport = free_port(), free_port()
        server = start("server", mp.tulle_server_config(sport, free_port(), origin.port, True),
                       sport)
        client = start("client", mp.tulle_client_config(cport, free_port(), sport, True), cport)
        time.sleep(0.5)
        marker.write_text("")
        load = run_loadgen(cport, rate=args.rate, duration=args.seconds, warmup=0.5,
                           connections=10)
        ps.stop(client)
        ps.stop(server)
        result: dict[str, Any] = {"requests": load["completed"], "errors": load["errors"],
                                  "latency_ms": load["latency_ms"]}
        for name in ("client", "server"):
            seen = json.loads((tmp / f"{name}.gc.json").read_text())
            result[name] = {phase: _summary(p) for phase, p in seen.items()}
    return result


if __name__ == "__main__":
    main()
