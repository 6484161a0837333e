"""Run the atheris differential harness for a bounded number of inputs (seconds, not minutes):
it must finish without a crash, i.e. no input made the proxy and the strict origin disagree."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_http1_request.py")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_http1_request_harness_finds_no_disagreement(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # The seed holds the smuggling shape, a chunked body with an extension and trailers, and
    # a pipelined request; the first byte chooses the read size.
    text = HARNESS.read_text()
    seed = "(" + text.split("SEED = (", 1)[1].split(")\n", 1)[0] + ")"
    (corpus / "seed").write_bytes(b"\x07" + eval(seed))  # noqa: S307 - our own constant
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "-runs=20000", "-max_total_time=20", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, timeout=120, env={**os.environ}, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
