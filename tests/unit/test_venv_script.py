"""scripts/venv.sh: which interpreter .venv is made with, and a .venv made with another one is
made again (ADR 0124)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "venv.sh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def _fake_venv(tmp_path: Path, home: str) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {home}\ninclude-system-site-packages = false\n"
                                     "version = 3.11.2\n")
    (venv / ".installed").touch()
    return venv


def test_an_explicit_python_is_taken_as_given() -> None:
    out = _run("pick", env={"PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sys.executable


def test_the_distributions_cpython_is_picked_when_usable() -> None:
    out = _run("pick", env={"PYTHON": ""})
    assert out.returncode == 0, out.stderr
    usable = os.access("/usr/bin/python3", os.X_OK) and subprocess.run(
        ["/usr/bin/python3", "-c", "import ensurepip, venv, sysconfig, os, sys; "
         "sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], "
         "'Python.h')) else 1)"], check=False, capture_output=True).returncode == 0
    assert out.stdout.strip() == ("/usr/bin/python3" if usable else "python3")


def test_a_venv_made_with_another_interpreter_is_removed(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, "/nonexistent/pyenv/versions/3.11.7/bin")
    out = _run("check", str(venv), env={"PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    assert not venv.exists()
    assert "re-creating" in out.stdout and "/nonexistent/pyenv/versions/3.11.7/bin" in out.stdout


def test_a_venv_made_with_the_picked_interpreter_is_kept(tmp_path: Path) -> None:
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    venv = _fake_venv(tmp_path, os.path.dirname(base))
    out = _run("check", str(venv), env={"PYTHON": base})
    assert out.returncode == 0, out.stderr
    assert (venv / ".installed").exists() and out.stdout == ""


def test_no_venv_yet_is_nothing_to_check(tmp_path: Path) -> None:
    out = _run("check", str(tmp_path / "absent"), env={"PYTHON": sys.executable})
    assert out.returncode == 0 and out.stdout == ""


@pytest.mark.parametrize("args", [(), ("bogus",), ("check",)])
def test_bad_usage_is_refused(args: tuple[str, ...]) -> None:
    out = _run(*args)
    assert out.returncode != 0
    assert "usage" in out.stderr
