"""The README's quickstart, every line as it stands, in one bash process: a control plane, two
versions of an unmodified app behind sidecars, a client sidecar, traffic through the mesh over
mTLS, a canary shift, `tulle stat`, a DENY policy and `tulle explain` saying why.

It uses the quickstart's own ports (the control plane's defaults, 15000-15003, 15100, 15200,
18081-18182); the test refuses to start, naming the port, when one is taken.  The whole process
group is killed at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tulle.net.ports import Wanted, first_taken

ROOT = Path(__file__).resolve().parents[3]
PORTS = (15000, 15001, 15002, 15003, 15100, 15200, 15680, 15681, 18081, 18082, 18181, 18182)


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def _end_group(pgid: int, grace: float = 20.0) -> None:
    """SIGTERM to the quickstart's process group, and wait until it is gone (a stopping
    sidecar drains first, ADR 0113); SIGKILL what is left after `grace`.  Without the wait, a
    next run found the last one's sidecar still on its admin port."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.timeout(300)
def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    taken = first_taken([Wanted("127.0.0.1", p, f"quickstart port {p}", "-") for p in PORTS])
    if taken:
        pytest.fail(f"cannot run the quickstart: {taken}")
    script = "set -e\n" + quickstart()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("TULLE_SERVER", None)
    env.pop("TULLE_TOKEN", None)
    proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        _end_group(proc.pid)
    assert proc.returncode == 0, out
    assert out.count("demo        ") >= 3 and "hello from v" in out, out
    splits = re.findall(r"^\s+(\d+) hello from v1\n\s+(\d+) hello from v2$", out, re.M)
    assert len(splits) == 2, out
    (a1, a2), (b1, b2) = ((int(x), int(y)) for x, y in splits)
    # (the whole output on a failure: a request that did not answer shows there, not in splits)
    assert a1 + a2 == 100 and 75 <= a1 <= 99, (splits, out)     # 90/10
    assert b1 + b2 == 100 and 30 <= b1 <= 70, (splits, out)     # 50/50
    assert "over mTLS" in out and "spiffe://cluster.local/ns/demo/sa/default" in out
    assert re.search(r"^403$", out, re.M), out
    assert re.search(r"authorization: DENY.*hello-no-admin", out), out  # explain says why
    assert "NAME" in out and "hello-v1" in out  # tulle stat's table
    assert "Traceback" not in out
