"""The atheris fuzz targets in `fuzz/` run in the suite for a bounded number of inputs each: the
seed corpus (the smuggling and injection shapes that were once bugs) and then mutations of it.
A longer campaign is the same command with a larger `-runs` or `-max_total_time`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris installs only where it has a wheel")

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("TULLE_FUZZ_RUNS", "20000"))


@pytest.mark.parametrize("target", ["http1_request", "http1_response", "h2_request", "h2_session",
                                    "dns_query", "otlp_response"])
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    args = [sys.executable, "-m", f"fuzz.{target}", f"-runs={RUNS}", "-max_len=512",
            "-seed=1", "-max_total_time=25", f"-artifact_prefix={tmp_path}/",
            str(corpus), str(ROOT / "fuzz" / "corpus" / target)]
    if target.startswith("http1"):
        args.insert(3, f"-dict={ROOT / 'fuzz' / 'http1.dict'}")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=55, check=False)
    tail = "\n".join(proc.stderr.splitlines()[-30:])
    assert proc.returncode == 0, f"fuzz.{target} found a failing input:\n{tail}"
    assert "DONE" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*"))
