"""The demo without root: processes on 127.0.0.1, sidecars with explicit listeners.

Network namespaces, iptables and a node agent need root; without them `tulle demo` runs the
loopback demo of the source checkout (`demo/run.py`: a control plane on SQLite, a frontend and
two backend versions meshed by sidecars on free ports, a canary shift half way), which prints
the `TULLE_SERVER` to use, since its ports are not the defaults.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "demo" / "run.py"


def run_loopback(duration: float, rps: float) -> int:
    if not SCRIPT.is_file():
        print(f"tulle demo: the loopback demo needs a source checkout ({SCRIPT} is missing)",
              file=sys.stderr)
        return 1
    env = {**os.environ, "DEMO_SECONDS": f"{duration or 60:g}", "DEMO_RPS": f"{int(rps)}"}
    try:
        return subprocess.run([sys.executable, str(SCRIPT)], env=env, check=False).returncode
    except KeyboardInterrupt:  # the script cleans up after itself on the same Ctrl-C
        return 130
