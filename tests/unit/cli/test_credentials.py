"""Which token `tulle` sends: --token, TULLE_TOKEN, TULLE_TOKEN_FILE, the user's token file,
and the local control plane's admin token file only for a server on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tulle.cli import credentials


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("TULLE_TOKEN", "TULLE_TOKEN_FILE", "TULLE_ADMIN_TOKEN_FILE", "TULLE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))  # not a running demo's
    monkeypatch.chdir(tmp_path)
    credentials.set_explicit(None)
    yield
    credentials.set_explicit(None)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


LOCAL = "http://127.0.0.1:15681"


def test_nothing_found_is_none() -> None:
    assert credentials.resolve(LOCAL) is None


def test_the_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "tulle.db.admin-token", "from-store")
    assert credentials.resolve(LOCAL) == "from-store"
    write(tmp_path / "config" / "tulle" / "token", "from-user-file")
    assert credentials.resolve(LOCAL) == "from-user-file"
    monkeypatch.setenv("TULLE_TOKEN_FILE", str(write(tmp_path / "named", "from-named-file")))
    assert credentials.resolve(LOCAL) == "from-named-file"
    monkeypatch.setenv("TULLE_TOKEN", "from-env")
    assert credentials.resolve(LOCAL) == "from-env"
    credentials.set_explicit("from-flag")
    assert credentials.resolve(LOCAL) == "from-flag"


def test_the_local_admin_token_goes_only_to_loopback(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("TULLE_STORE", f"sqlite:{tmp_path / 'state' / 'cp.db'}")
    write(tmp_path / "state" / "cp.db.admin-token", "local-admin")
    for server in (LOCAL, "http://localhost:15681", "https://[::1]:15681"):
        assert credentials.resolve(server) == "local-admin", server
    for server in ("http://10.0.0.5:15681", "https://cp.example:15681", "http://0.0.0.0:1"):
        assert credentials.resolve(server) is None, server
    monkeypatch.setenv("TULLE_ADMIN_TOKEN_FILE", str(write(tmp_path / "elsewhere", "named")))
    assert credentials.resolve(LOCAL) == "named"


def test_the_runtime_admin_token_is_last_and_only_for_loopback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`tulle demo` publishes its control plane's token in the runtime directory."""
    write(tmp_path / "run" / "tulle" / "admin-token", "demo-admin")
    assert credentials.resolve(LOCAL) == "demo-admin"
    assert credentials.resolve("http://10.0.0.5:15681") is None
    write(tmp_path / "tulle.db.admin-token", "from-store")  # a store in the cwd comes first
    assert credentials.resolve(LOCAL) == "from-store"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(credentials.os, "geteuid", lambda: 1000)
    assert credentials.runtime_admin_token_file() is None  # no shared path for non-root
    monkeypatch.setattr(credentials.os, "geteuid", lambda: 0)
    assert credentials.runtime_admin_token_file() == Path("/run/tulle/admin-token")


def test_a_loose_token_file_is_used_with_a_warning(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "config" / "tulle" / "token", "loose-secret", mode=0o644)
    assert credentials.resolve(LOCAL) == "loose-secret"
    err = capsys.readouterr().err
    assert "readable by others" in err and "loose-secret" not in err


def test_the_proxy_never_takes_the_api_token_file_for_its_bootstrap_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`TULLE_TOKEN_FILE` names the CLI's API token; `tulle proxy run` would send a bootstrap
    token file's content over the (plaintext) stream, so it reads its own variable only."""
    from click.testing import CliRunner

    from tulle.cli import proxy_run
    from tulle.cli.commands import cli
    from tulle.dataplane import runner

    seen: list[str | None] = []

    def fake_run_subscribed(*args: object, **kwargs: object) -> int:
        seen.append(args[10])  # type: ignore[arg-type]  # token_file
        return 0

    monkeypatch.setattr(proxy_run, "run_subscribed", fake_run_subscribed)
    monkeypatch.setattr(runner, "configure_logging", lambda _level: None)
    api_token = write(tmp_path / "api-token", "tulle_0123456789abcdef_" + "A" * 43)
    bootstrap = write(tmp_path / "bootstrap", "tbt1.x.y")
    argv = ["proxy", "run", "--control-plane", "127.0.0.1:1", "--workload", "w",
            "--log-level", "error"]
    runner = CliRunner()
    assert runner.invoke(cli, argv, env={"TULLE_TOKEN_FILE": str(api_token)}).exit_code == 0
    assert runner.invoke(cli, argv, env={"TULLE_TOKEN_FILE": str(api_token),
                                         "TULLE_BOOTSTRAP_TOKEN_FILE": str(bootstrap)}
                         ).exit_code == 0
    assert seen == [None, str(bootstrap)]


# -- attack review A2 (ADR 0060): the local admin token files are found by their place, so
# -- only a regular file of this user's is taken, without following a link.

OTHER_UID = 65534  # nobody


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
@pytest.mark.parametrize("place", ["store", "runtime"])
def test_a_local_admin_token_file_of_another_user_is_not_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], place: str) -> None:
    path = (tmp_path / "tulle.db.admin-token" if place == "store"
            else tmp_path / "run" / "tulle" / "admin-token")
    write(path, "planted")
    os.chown(path, OTHER_UID, OTHER_UID)
    assert credentials.resolve(LOCAL) is None
    assert "not a file of this user's" in capsys.readouterr().err
    os.chown(path, os.geteuid(), os.getegid())
    assert credentials.resolve(LOCAL) == "planted"


def test_a_local_admin_token_file_that_is_a_link_or_a_fifo_is_not_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = write(tmp_path / "elsewhere", "planted")
    (tmp_path / "tulle.db.admin-token").symlink_to(target)
    assert credentials.resolve(LOCAL) is None
    (tmp_path / "tulle.db.admin-token").unlink()
    os.mkfifo(tmp_path / "tulle.db.admin-token")  # would block a plain open for ever
    assert credentials.resolve(LOCAL) is None
    assert "not a file of this user's" in capsys.readouterr().err


def test_a_token_file_the_user_names_may_still_be_a_link(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere", "mine")
    (tmp_path / "named").symlink_to(target)
    monkeypatch.setenv("TULLE_TOKEN_FILE", str(tmp_path / "named"))
    assert credentials.resolve(LOCAL) == "mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_an_admin_token_file_named_in_the_environment_may_be_another_users(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "shared" / "admin-token", "named")
    os.chown(path, OTHER_UID, OTHER_UID)
    monkeypatch.setenv("TULLE_ADMIN_TOKEN_FILE", str(path))
    assert credentials.resolve(LOCAL) == "named"
