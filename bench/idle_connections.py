"""Latency at 1,000 req/s while the proxy holds many idle keep-alive connections (ADR 0085).

    python -m bench.idle_connections --idle 8000 --rounds 3

A proxy's own periodic work runs on the event loop that carries the requests: whatever it
costs per open connection or descriptor is a pause every period that grows with the
connection count, and the requests that arrive meanwhile wait for it.  A mesh proxy in front
of a busy service holds thousands of idle keep-alive connections (clients' pools), so such a
pause lands in the tail exactly where the added-p99 goals of issues 9 and 11 are measured.

Each peer (one Tulle proxy, HAProxy: one thread each, on `PROXY_CPU`) is loaded at a fixed rate
by `bench.loadgen` (10 connections) twice per round: with no other connection, and with
`--idle` connections opened by this process, each having made one request and then left open
and silent (held below the proxy's idle timeout).  The peers and the two phases rotate from
round to round.  Reported per peer and phase: p50, p99, p99.9 and the worst request (ms), as
the median of the rounds with their range, and the p99.9 the idle connections added.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import BODY_PATH, PROXY_CPU, Running, start_origin, start_tulle, tulle_config
from bench.procs import ProcessSet, free_port, tree, wait_port
from bench.tools import git_rev, run_loadgen

PEERS = ("tulle", "haproxy")


def start_haproxy_many(ps: ProcessSet, origin_port: int, maxconn: int) -> Running:
    """HAProxy as `bench.peers` runs it, with room for the idle connections."""
    from bench.peers import haproxy_config

    port, stats = free_port(), free_port()
    conf = ps.tmp / "haproxy-idle.cfg"
    conf.write_text(haproxy_config(ps.tmp, port, stats, origin_port, "http1")
                    .replace("maxconn 4000", f"maxconn {maxconn}"))
    proc = ps.start("haproxy-idle", ["haproxy", "-db", "-f", str(conf)], cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("haproxy", port, proc, tree(proc.pid))


def open_idle(port: int, n: int) -> list[socket.socket]:
    """`n` keep-alive connections, each after one full exchange (so the proxy holds them as
    idle client connections, not as unfinished heads)."""
    request = (f"GET {BODY_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the peer closed an idle connection's first exchange")
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the peer closed an idle connection's first exchange")
                body += chunk
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def phase(r: Running, args: argparse.Namespace) -> dict[str, float]:
    res = run_loadgen(r.port, rate=args.rate, duration=args.duration, warmup=args.warmup,
                      connections=10)
    if res["errors"] or res["non2xx"] or res["timed_out"]:
        raise RuntimeError(f"{r.name}: failed requests: {res}")
    lat = res["latency_ms"]
    return {k: round(lat[k], 3) for k in ("p50", "p99", "p999", "max")}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--idle", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    # Twice the idle connections: the proxy's overload guard (file descriptors against the
    # soft limit) must stay far below its thresholds, or it would refuse the load.
    need = 2 * args.idle + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"bench.idle_connections: RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))  # the peers inherit it
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {
        p: {"none": [], "idle": []} for p in PEERS}
    with tempfile.TemporaryDirectory() as tmp, ProcessSet(Path(tmp)) as ps:
        Path(tmp).chmod(0o755)
        origin = start_origin(ps)
        peers = {"tulle": start_tulle(ps, origin.port, "http1"),
                 "haproxy": start_haproxy_many(ps, origin.port, args.idle + 512)}
        for k in range(args.rounds):
            for name in PEERS[k % 2:] + PEERS[:k % 2]:
                r = peers[name]
                order = ("none", "idle") if k % 2 == 0 else ("idle", "none")
                for ph in order:
                    socks = open_idle(r.port, args.idle) if ph == "idle" else []
                    try:
                        got = phase(r, args)
                    finally:
                        for s in socks:
                            s.close()
                    rounds[name][ph].append(got)
                    print(f"round {k + 1} {name:8s} {ph:5s} " + " ".join(
                        f"{q} {v:.3f}" for q, v in got.items()), file=sys.stderr, flush=True)
    out: dict[str, Any] = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "git": git_rev(), "idle_connections": args.idle, "rate": args.rate,
                           "duration_s": args.duration, "rounds": args.rounds,
                           "proxy_config": tulle_config(0, 0, 0, "http1")["settings"]}
    for name in PEERS:
        row: dict[str, Any] = {}
        for ph in ("none", "idle"):
            row[ph] = {q: spread([x[q] for x in rounds[name][ph]])
                       for q in ("p50", "p99", "p999", "max")}
        row["idle_added_p99_ms"] = spread([i["p99"] - n["p99"] for i, n in
                                           zip(rounds[name]["idle"], rounds[name]["none"], strict=True)])
        row["idle_added_p999_ms"] = spread([i["p999"] - n["p999"] for i, n in
                                            zip(rounds[name]["idle"], rounds[name]["none"], strict=True)])
        row["by_round"] = rounds[name]
        out[name] = row
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
