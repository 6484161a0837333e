"""`Topology.close()` finishes its clean-up even when the control plane does not end in time
(hygiene audit, ADR 0105): the wait after SIGKILL raised, and the state directory stayed."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from tulle.demo.topology import Topology


class _Stuck:
    """A control plane still there after SIGKILL (a task stuck in the kernel)."""

    pid = 2**22 + 1  # no such process group: os.killpg says ProcessLookupError

    def poll(self) -> None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("stuck", timeout or 0)


def test_close_removes_the_state_dir_when_the_control_plane_does_not_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    topo = Topology(api_port=1, stream_port=2, rps=1)
    topo.state.mkdir()
    topo.cp = _Stuck()  # type: ignore[assignment]
    topo.close()
    assert not topo.state.exists()
