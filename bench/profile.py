"""Where Tulle's proxy spends its CPU under load: py-spy on a proxy saturated by wrk.

    .venv/bin/python -m bench.profile --seconds 10 [--lines] [--top 25]

Starts the origin and one Tulle HTTP/1 proxy exactly as the benchmark does (proxy on CPU 0),
runs wrk against it (CPU 1) and samples the proxy with `py-spy record --nonblocking` (also on
CPU 1, so the sampler does not steal the proxy's CPU; non-blocking means the proxy is never
paused, at the price of an occasional torn stack).  Prints the hottest functions by *self*
time (samples where the function was the innermost Python frame — C calls it makes, like
`transport.write` or httptools' parser, count as its own) and by *total* time (anywhere on
the stack), and writes the raw collapsed stacks next to the results for later digging (the
collapsed format loads into speedscope or flamegraph.pl as it is).

Time spent inside uvloop's C event loop (epoll, socket reads, calling protocol callbacks) has
no Python frame of its own and shows up as self time of the outermost frame that started the
loop (`run` in uvloop/__init__.py or asyncio's runner).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.peers import LOAD_CPU, check_http, start_origin, start_tulle
from bench.procs import ProcessSet
from bench.tools import run_wrk

ROOT = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        return str(exe)
    found = shutil.which("py-spy")
    if not found:
        sys.exit("py-spy is not installed: .venv/bin/pip install 'py-spy>=0.3.14,<0.5'")
    return found


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{m.group('line')}" if m.group("line") else ""
    return f"{m.group('func')} ({path}{line})"


def summarize(collapsed: str, top: int) -> dict[str, object]:
    """Self and total sample counts per function from py-spy's collapsed ("raw") output."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        self_c[frames[-1]] += n
        for f in set(frames):
            total_c[f] += n

    def table(c: Counter[str], skip_trunk: bool = False) -> list[dict[str, object]]:
        rows = [(f, n) for f, n in c.most_common()
                # The start-up chain (click, runner, uvloop.run) is on every stack: not news.
                if not (skip_trunk and n >= 0.95 * samples)]
        return [{"function": f, "samples": n, "pct": round(100 * n / max(1, samples), 1)}
                for f, n in rows[:top]]

    return {"samples": samples, "self": table(self_c), "total": table(total_c, skip_trunk=True)}


def render(summary: dict[str, object]) -> str:
    out = [f"{summary['samples']} samples"]
    for kind in ("self", "total"):
        out.append(f"\nby {kind} time:")
        rows = summary[kind]
        assert isinstance(rows, list)
        for r in rows:
            out.append(f"  {r['pct']:5.1f}%  {r['function']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="profile Tulle under wrk load with py-spy")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile")
    ap.add_argument("--lines", action="store_true",
                    help="attribute samples to source lines instead of whole functions")
    args = ap.parse_args(argv)
    spy = py_spy()
    tmp = Path(tempfile.mkdtemp(prefix="tulle-bench-prof-"))
    tmp.chmod(0o755)
    raw = tmp / "profile.txt"
    try:
        with ProcessSet(tmp) as ps:
            origin = start_origin(ps)
            tulle = start_tulle(ps, origin.port, "http1")
            check_http(tulle)
            run_wrk(tulle.port, duration=1, connections=args.connections)  # warm up pools
            per = [] if args.lines else ["-F"]
            rec = ps.start("py-spy", [spy, "record", "--nonblocking", *per, "-r", str(args.rate),
                                      "-d", str(args.seconds), "-f", "raw", "-o", str(raw),
                                      "-p", str(tulle.pids[0])], cpu=LOAD_CPU)
            time.sleep(0.5)
            wrk = run_wrk(tulle.port, duration=args.seconds + 1, connections=args.connections)
            rec.popen.wait(timeout=args.seconds + 30)
            if not raw.exists():
                sys.exit(f"py-spy wrote nothing: {rec.tail(10)}")
            summary = summarize(raw.read_text(), args.top)
            summary["wrk_rps"] = round(wrk["rps"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, args.out.with_suffix(".collapsed.txt"))
            args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
            print(f"Tulle under wrk ({args.connections} connections): {wrk['rps']:.0f} req/s")
            print(render(summary))
            print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.collapsed.txt')}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
