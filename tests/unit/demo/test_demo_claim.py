"""One `tulle demo` per runtime token file (hygiene audit, ADR 0105): two demos on other API
ports used to share it, the second overwrote the first's token and the first failed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tulle.demo.topology import DemoError, claim_runtime_dir


def test_a_second_claim_is_refused_with_the_reason_until_the_first_is_released(
        tmp_path: Path) -> None:
    first = claim_runtime_dir(tmp_path)
    with pytest.raises(DemoError, match="another tulle demo"):
        claim_runtime_dir(tmp_path)
    first.close()
    claim_runtime_dir(tmp_path).close()
    assert list(tmp_path.iterdir()) == []  # no lock file is left in the directory


def test_a_claim_dies_with_its_process_even_by_sigkill(tmp_path: Path) -> None:
    code = ("import sys, time; from tulle.demo.topology import claim_runtime_dir; "
            "c = claim_runtime_dir(__import__('pathlib').Path(sys.argv[1])); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DemoError):
            claim_runtime_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 5
    while True:
        try:
            claim_runtime_dir(tmp_path).close()
            break
        except DemoError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
