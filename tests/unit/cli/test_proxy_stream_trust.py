"""`tulle proxy run --control-plane`: how it will verify the control plane, decided before it
starts (ADR 0034)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tulle.cli.commands import cli
from tulle.dataplane.stream_tls import StreamTrust

ARGV = ["proxy", "run", "--control-plane", "127.0.0.1:1", "--workload", "w",
        "--log-level", "error"]


def _token_file(tmp_path: Path, prefix: str, claims: dict[str, Any]) -> Path:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    f = tmp_path / "token"
    f.write_text(f"{prefix}.{body}.bWFj")
    return f


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[StreamTrust | None]:
    from tulle.dataplane import runner, subscribed

    seen: list[StreamTrust | None] = []

    def fake_run(*_a: object, trust: StreamTrust | None = None, **_k: object) -> int:
        seen.append(trust)
        return 0

    monkeypatch.setattr(subscribed, "run", fake_run)
    monkeypatch.setattr(runner, "configure_logging", lambda _level: None)
    return seen


def test_a_tbt2_token_gives_its_pins(tmp_path: Path, started: list[StreamTrust]) -> None:
    pin = "sha256:" + "ee" * 32
    f = _token_file(tmp_path, "tbt2", {"ca": [pin]})
    res = CliRunner().invoke(cli, [*ARGV, "--token-file", str(f)], env={})
    assert res.exit_code == 0, res.output
    assert started[0] is not None and started[0].pins == [pin]


def test_a_tbt1_token_needs_a_ca_file(tmp_path: Path, started: list[StreamTrust]) -> None:
    f = _token_file(tmp_path, "tbt1", {"id": "x"})
    res = CliRunner().invoke(cli, [*ARGV, "--token-file", str(f)], env={})
    assert res.exit_code == 2 and "carries no CA pin" in res.output
    assert f.read_text() not in res.output and started == []


def test_plaintext_is_an_explicit_and_loud_choice(tmp_path: Path, started: list[StreamTrust],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "tulle.agent"):
        res = CliRunner().invoke(cli, [*ARGV, "--stream-plaintext"], env={})
    assert res.exit_code == 0, res.output
    assert started[0] is not None and started[0].plaintext
    assert "INSECURE" in caplog.text
