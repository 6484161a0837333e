"""`tulle proxy validate` and `tulle proxy run` as an operator runs them: a subprocess, its
output and its exit status."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml
from tests.support.subproc import TULLE


def _tulle(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TULLE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _write(tmp_path: Path, cfg: dict[str, Any]) -> str:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _valid(port: int = 18080) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": port, "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "backend", "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "backend"}]}]}]}],
    }


def test_validate_a_valid_file_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid())
    r = _tulle("proxy", "validate", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: valid (1 listeners, 1 route tables, 1 clusters)"


def test_validate_prints_every_error_with_its_field_path_and_exits_1(tmp_path: Path) -> None:
    cfg = _valid()
    cfg["listeners"][0]["port"] = 70000
    cfg["listeners"][0]["colour"] = "blue"
    cfg["clusters"][0]["endpoints"][0]["port"] = "nine"
    path = _write(tmp_path, cfg)
    r = _tulle("proxy", "validate", path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert f"{path}: listeners[0].port: must be <= 65535, got 70000" in lines
    assert f"{path}: listeners[0].colour: unknown field" in lines
    assert f"{path}: clusters[0].endpoints[0].port: expected an integer, got str" in lines
    assert lines[-1] == f"{path}: 3 error(s)"


def test_validate_rejects_port_0_with_several_workers(tmp_path: Path) -> None:
    cfg = _valid(port=0)
    cfg["settings"] = {"workers": 2}
    r = _tulle("proxy", "validate", _write(tmp_path, cfg))
    assert r.returncode == 1
    assert "listeners[0].port: must not be 0 when settings.workers > 1" in r.stderr


def test_validate_a_missing_file_exits_1(tmp_path: Path) -> None:
    r = _tulle("proxy", "validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1
    assert "cannot read" in r.stderr


def test_run_with_an_invalid_file_prints_errors_and_exits_2(tmp_path: Path) -> None:
    cfg = _valid()
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"][0]["cluster"] = "ghost"
    r = _tulle("proxy", "run", "--config", _write(tmp_path, cfg))
    assert r.returncode == 2
    assert ("error: route_tables[0].virtual_hosts[0].rules[0].backends[0].cluster: "
            "no cluster named 'ghost'") in r.stderr.splitlines()


def test_run_exits_1_when_a_listener_cannot_be_bound(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = _valid(port=taken.getsockname()[1])
        cfg["admin"] = {"port": 0}
        r = _tulle("proxy", "run", "--config", _write(tmp_path, cfg))
    assert r.returncode == 1
    assert "cannot bind" in r.stderr
