"""Running the load generators (ours, wrk, h2load) on the load CPU and parsing what they print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.peers import BODY_PATH, LOAD_CPU

ROOT = Path(__file__).resolve().parent.parent


def git_rev() -> str:
    """The checkout's commit, short (what a result file names as the tree it measured);
    "unknown" outside a git checkout."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_loadgen(port: int, *, rate: float, duration: float, warmup: float,
                connections: int, path: str = BODY_PATH,
                headers: tuple[str, ...] = (), pacing: str = "thread") -> dict[str, Any]:
    cmd = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "bench.loadgen",
           "--port", str(port), "--path", path, "--rate", str(rate), "--pacing", pacing,
           "--duration", str(duration), "--warmup", str(warmup),
           "--connections", str(connections), "--samples",
           *(a for h in headers for a in ("--header", h))]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                         timeout=warmup + duration + 30)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def parse_wrk(text: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if not m:
        raise ValueError(f"unexpected wrk output:\n{text}")
    res["requests"] = int(m.group(1))
    res["elapsed_s"] = _ms(m.group(2) + m.group(3)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else res["requests"] / res["elapsed_s"]
    lat = {}
    for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M):
        lat[f"p{p}"] = round(_ms(v), 3)
    res["latency_ms"] = lat
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def run_wrk(port: int, *, duration: float, connections: int, threads: int = 1,
            path: str = BODY_PATH, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    duration = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["taskset", "-c", str(LOAD_CPU), "wrk", f"-t{threads}", f"-c{connections}",
           f"-d{duration:g}s", "--latency", *(a for h in headers for a in ("-H", h)),
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=duration + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    res = parse_wrk(out.stdout)
    res.update(connections=connections, threads=threads, duration_s=duration)
    return res


def parse_h2load(text: str) -> dict[str, Any]:
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not m or not r:
        raise ValueError(f"unexpected h2load output:\n{text}")
    res: dict[str, Any] = {
        "elapsed_s": _ms(m.group(1) + m.group(2)) / 1000, "rps": float(m.group(3)),
        "requests": int(r.group(3)), "succeeded": int(r.group(4)),
        "failed": int(r.group(5)) + int(r.group(6)) + int(r.group(7)),
    }
    lm = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if lm:
        res["latency_ms"] = {"min": round(_ms(lm.group(1)), 3), "max": round(_ms(lm.group(2)), 3),
                             "mean": round(_ms(lm.group(3)), 3)}
    return res


def run_h2load(port: int, *, duration: float, clients: int, streams: int) -> dict[str, Any]:
    # No --warm-up-time: the proxy's CPU is read around the whole run, so every request counts.
    cmd = ["taskset", "-c", str(LOAD_CPU), "h2load", "-t1", f"-c{clients}", f"-m{streams}",
           f"-D{duration:g}", f"http://127.0.0.1:{port}{BODY_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=duration + 30)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr.strip()}")
    res = parse_h2load(out.stdout)
    res.update(clients=clients, streams=streams, duration_s=duration)
    return res
