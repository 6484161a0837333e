"""How long `tulle get` takes, as a user feels it: the whole process, against a running
control plane (issue 14's target: <= 150 ms), beside the floor of the same interpreter doing
nothing but start (`python -c pass`) and the same interpreter making the same REST call with
urllib only.

    .venv/bin/python -m bench.cli [--runs 15] [--rounds 3]

A control plane on free loopback ports with a SQLite store in a temporary directory, ten
Services applied; then, per round, `--runs` alternating runs of each command (ABAB, so a busy
moment hits all three alike).  Reported per command: the median of the rounds' medians, with
the spread (min and max of the round medians), in milliseconds, as JSON.  `python -X importtime
-c "from tulle.cli.commands import cli"` shows what a command imports, if the figure grows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tulle.net.ports import unused_port

PY = sys.executable
TULLE = str(Path(PY).parent / "tulle")


def _free() -> int:
    return unused_port()  # (not port 0's pick: see tulle.net.ports)


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        api, stream = _free(), _free()
        store = f"sqlite:{tmp}/cp.db"
        cp = subprocess.Popen([TULLE, "control-plane", "run", "--store", store, "--api-port",
                               str(api), "--stream-port", str(stream), "--log-level",
                               "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            token_file = Path(f"{tmp}/cp.db.admin-token")
            for _ in range(300):
                if token_file.exists() and token_file.read_text().strip():
                    break
                time.sleep(0.05)
            server = f"http://127.0.0.1:{api}"
            env = {**os.environ, "TULLE_SERVER": server,
                   "TULLE_TOKEN": token_file.read_text().strip()}
            docs = "".join(
                f"---\napiVersion: mesh.tulle.dev/v1alpha1\nkind: Service\nmetadata: "
                f"{{name: s{i}, namespace: bench}}\nspec: {{selector: {{app: s{i}}}, ports: "
                f"[{{name: http, port: 80}}]}}\n" for i in range(10))
            for _ in range(100):  # the API may take a moment after the token is written
                if subprocess.run([TULLE, "apply", "-f", "-"], input=docs.encode(), env=env,
                                  capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.1)
            fetch = ("import os, urllib.request as u; r = u.Request(os.environ['TULLE_SERVER'] "
                     "+ '/api/v1/resources/svc?namespace=bench', headers={'authorization': "
                     "'Bearer ' + os.environ['TULLE_TOKEN']}); u.urlopen(r).read()")
            commands = {"tulle get svc": [TULLE, "get", "svc", "-n", "bench"],
                        "python -c pass": [PY, "-c", "pass"],
                        "python urllib GET": [PY, "-c", fetch]}
            rounds: dict[str, list[float]] = {k: [] for k in commands}
            for _ in range(args.rounds):
                times: dict[str, list[float]] = {k: [] for k in commands}
                for _ in range(args.runs):
                    for name, argv in commands.items():
                        times[name].append(_timed(argv, env))
                for name in commands:
                    rounds[name].append(statistics.median(times[name]))
        finally:
            cp.terminate()
            cp.wait(10)
    out = {name: {"median_ms": round(statistics.median(v), 1),
                  "spread_ms": [round(min(v), 1), round(max(v), 1)]}
           for name, v in rounds.items()}
    out["target_ms"] = 150  # type: ignore[assignment]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
