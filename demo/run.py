"""The loopback demo, kept at its old path: `python demo/run.py` is `tulle demo --loopback`.

The demo lives in the package now (`tulle.demo`; docs/demo.md): `make demo` runs `tulle demo`,
which builds network namespaces as root and falls back to this loopback demo otherwise.
DEMO_SECONDS and DEMO_RPS are read as before.
"""

from __future__ import annotations

import os
import sys

from tulle.demo.loopback import run_loopback

if __name__ == "__main__":
    sys.exit(run_loopback(float(os.environ.get("DEMO_SECONDS", "20")),
                          float(os.environ.get("DEMO_RPS", "50"))))
