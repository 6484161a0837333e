"""Instructions per request in each proxy of a two-hop pair, by library: the CPU figure a busy
machine cannot spoil (ADR 0067).

    python -m bench.pair_instructions --pairs tulle-mtls,tulle-2hop --requests 400

Each pair (`bench.mtls_peers`: `tulle-mtls`, `tulle-2hop`) is started with both proxies under
valgrind's callgrind (`--collect-atstart`, counters zeroed after a warm-up with
`callgrind_control`), loaded at a low fixed rate (callgrind runs a process ~50x slower) by
`bench.loadgen`, and dumped; the self instruction counts of every function are summed by the
shared object they are in (libpython, uvloop's `loop`, the compiled hot path, OpenSSL's
`libssl` / `libcrypto`, libc, ...) and divided by the requests answered.  User space only:
the kernel's share (system calls, loopback TCP) is not counted.  What the proxies do on their
own timers (the connection sweeper, the overload guard's descriptor count, ...) is taken out:
an idle window as long as the loaded one is recorded just before it and subtracted, function
by function, so the figure is the requests' own work.  Instruction counts are not
time (cache misses and the CPU's speed are not in them), but they repeat to within ~1% from run
to run whatever else the machine does, so a change of a few thousand instructions per request
shows where timing rounds cannot.  `--top N` also lists the N costliest functions per proxy.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import mtls_peers, procs
from bench.peers import start_origin
from bench.procs import ProcessSet
from bench.tools import run_loadgen

_NAME = re.compile(r"(c?(?:ob|fn|fl|fi|fe))=(?:\((\d+)\))?\s*(.*)")

Costs = collections.Counter[tuple[str, str]]
"""(shared object, function) -> self instructions."""


def parse(path: Path) -> Costs:
    """Self costs from a callgrind output file (with name compression).  The cost line after
    a `calls=` line is the call's inclusive cost and belongs to the callee: skipped."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}, "fl": {}}
    ob = fn_ob = fn = ""
    costs: Costs = collections.Counter()
    skip = False
    with path.open(errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn:
                    costs[(fn_ob, fn)] += int(parts[1])
                continue
            if line.startswith("calls="):
                skip = True
                continue
            m = _NAME.match(line.rstrip("\n"))
            if m is None:
                continue
            kind, idx, name = m.groups()
            base = kind[1:] if kind.startswith("c") else kind  # calls share the name tables
            base = "fl" if base in ("fi", "fe") else base
            if idx is not None:
                if name:
                    names[base][idx] = name
                else:
                    name = names[base].get(idx, idx)
            if kind == "ob":
                ob = name
            elif kind == "fn":
                fn, fn_ob = name, ob
    return costs


def _measure(pair: str, out: Path, rate: float, requests: int) -> dict[str, tuple[Costs, int]]:
    out.mkdir(parents=True, exist_ok=True)
    hops = iter(["server", "client"])  # `_tulle_pair` starts the server proxy first

    def cmd() -> list[str]:
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/{next(hops)}.%p",
                sys.executable, "-m", "tulle.cli.main"]

    real_cmd, real_wait = mtls_peers.tulle_cmd, mtls_peers.wait_port
    mtls_peers.tulle_cmd = cmd
    mtls_peers.wait_port = lambda port, proc, timeout=15.0: procs.wait_port(port, proc, 300)
    try:
        with tempfile.TemporaryDirectory() as tmp, ProcessSet(Path(tmp)) as ps:
            Path(tmp).chmod(0o755)
            origin = start_origin(ps)
            r = mtls_peers._tulle_pair(ps, origin.port, pair == "tulle-mtls")
            pids = [str(p) for p in r.pids]
            run_loadgen(r.port, rate=rate, duration=3, warmup=0.5, connections=10)
            seconds = requests / rate
            subprocess.run(["callgrind_control", "--zero", *pids], capture_output=True,
                           check=True)
            time.sleep(seconds)  # the idle window: timers only
            subprocess.run(["callgrind_control", "--dump=idle", *pids], capture_output=True,
                           check=True)
            res = run_loadgen(r.port, rate=rate, duration=seconds, warmup=0.0,
                              connections=10)
            subprocess.run(["callgrind_control", "--dump=measured", *pids],
                           capture_output=True, check=True)
            mtls_peers.stop_pair(ps, pair)
    finally:
        mtls_peers.tulle_cmd, mtls_peers.wait_port = real_cmd, real_wait
    done = int(res["completed"])
    result = {}
    for hop in ("client", "server"):
        idle = parse(sorted(out.glob(f"{hop}.*.1"))[0])
        loaded = parse(sorted(out.glob(f"{hop}.*.2"))[0])
        loaded.subtract(idle)
        result[hop] = (loaded, done)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pairs", default="tulle-mtls,tulle-2hop")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--top", type=int, default=0)
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench.pair_instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs.split(","):
            for hop, (costs, done) in _measure(pair, Path(tmp) / pair, args.rate,
                                               args.requests).items():
                by_object: collections.Counter[str] = collections.Counter()
                for (ob, _), v in costs.items():
                    by_object[ob.rsplit("/", 1)[-1] or "?"] += v
                total = sum(by_object.values())
                print(f"{pair} {hop} proxy: {total / done:,.0f} instructions per request "
                      f"({done} requests)")
                for ob, v in by_object.most_common(8):
                    print(f"  {v / done:10,.0f}  {ob}")
                for (ob, fn), v in costs.most_common(args.top):
                    print(f"      {v / done:9,.0f}  {fn[:70]}  [{ob.rsplit('/', 1)[-1]}]")


if __name__ == "__main__":
    main()
