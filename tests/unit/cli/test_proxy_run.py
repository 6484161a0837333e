"""`tulle proxy run`'s own parser (no click in a running proxy, ADR 0068) reads every command
line exactly as the click command built from the same table does, and refuses what click
refuses, with click's exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from tulle.cli import proxy_run
from tulle.cli.commands import cli
from tulle.cli.main import wants_lean_proxy
from tulle.cli.proxy_run import UsageError, parse


def _click_params(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    group = cli.get_command(click.Context(cli), "proxy")
    assert isinstance(group, click.Group)
    cmd = group.get_command(click.Context(group), "run")
    assert cmd is not None
    with pytest.MonkeyPatch.context() as mp:
        for k in ("TULLE_BOOTSTRAP_TOKEN_FILE", "TULLE_STREAM_CA_FILE"):
            mp.delenv(k, raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        ctx = cmd.make_context("run", list(argv))
    return dict(ctx.params)


LINES = [
    ([], {}),
    (["--config", "p.json", "--watch-interval", "0", "--log-level", "warning"], {}),
    (["--config=p.json", "--watch-interval=2.5"], {}),
    (["--control-plane", "a:1", "--control-plane", "b:2", "--workload", "w", "-n", "shop",
      "--port", "http:18001:8001:http", "--port", "g:9:10", "--label", "app=web",
      "--label", "v=1", "--service-account", "sa", "--outbound-port", "15001",
      "--dns-port", "15053", "--cache-dir", "/tmp/c", "--admin-port", "0",
      "--token-file", "t", "--ca-file", "ca.pem", "--stream-plaintext", "--address", "10.0.0.1"],
     {}),
    (["-nshop", "--node-config", "node.yaml", "--control-plane", "a:1"], {}),
    (["--control-plane", "a:1", "--workload", "w"],
     {"TULLE_BOOTSTRAP_TOKEN_FILE": "from-env", "TULLE_STREAM_CA_FILE": "ca-env.pem"}),
    (["--token-file", "given", "--control-plane", "a:1", "--workload", "w"],
     {"TULLE_BOOTSTRAP_TOKEN_FILE": "from-env"}),
]


@pytest.mark.parametrize(("argv", "env"), LINES)
def test_the_lean_parser_reads_what_click_reads(argv: list[str], env: dict[str, str]) -> None:
    assert parse(argv, env) == _click_params(argv, env)


@pytest.mark.parametrize(("argv", "words"), [
    (["--nope"], "No such option: --nope"),
    (["--config"], "Option '--config' requires an argument."),
    (["--stream-plaintext=yes"], "does not take a value"),
    (["extra"], "unexpected extra argument (extra)"),
    (["--dns-port", "70000"], "Invalid value for '--dns-port': 70000 is not in the range "
                              "0<=x<=65535."),
    (["--admin-port", "x"], "Invalid value for '--admin-port': 'x' is not a valid integer."),
    (["--watch-interval", "-1"], "Invalid value for '--watch-interval': -1 is not in the range"),
    (["--log-level", "loud"], "Invalid value for '--log-level': 'loud' is not one of"),
])
def test_what_click_refuses_the_lean_parser_refuses(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(argv, {})
    assert words in err.value.render()
    with pytest.raises(click.UsageError):  # and click too
        _click_params(argv, {})


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        parse(["--config", str(tmp_path)], {})


@pytest.mark.parametrize(("values", "hint"), [(("http",), "--port"), (("a:1:x",), "--port")])
def test_bad_ports_name_the_option(values: tuple[str, ...], hint: str) -> None:
    with pytest.raises(UsageError) as err:
        proxy_run.parse_ports(values)
    assert err.value.hint == hint


def test_bad_labels_name_the_option() -> None:
    with pytest.raises(UsageError) as err:
        proxy_run.parse_labels(("novalue",))
    assert err.value.hint == "--label"
    assert proxy_run.parse_labels(("a=1", "b=", "a=2")) == {"a": "2", "b": ""}


def test_only_a_proxy_run_without_help_skips_click() -> None:
    assert wants_lean_proxy(["proxy", "run", "--config", "x"])
    assert not wants_lean_proxy(["proxy", "run", "--config", "x", "--help"])
    assert not wants_lean_proxy(["proxy", "validate", "x"])
    assert not wants_lean_proxy(["get", "svc"])


def _tulle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tulle.cli.main", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_script_answers_usage_errors_as_click_does() -> None:
    r = _tulle("proxy", "run", "--bogus")
    assert r.returncode == 2
    assert r.stderr.startswith("Usage: tulle proxy run [OPTIONS]\n")
    assert r.stderr.rstrip().endswith("Error: No such option: --bogus")
    r = _tulle("proxy", "run")
    assert r.returncode == 2
    assert "give exactly one of --config FILE or --control-plane ADDR" in r.stderr


def test_help_still_comes_from_click() -> None:
    r = _tulle("proxy", "run", "--help")
    assert r.returncode == 0
    for opt in proxy_run.OPTIONS:
        assert opt.flags[-1] in r.stdout


LEAN_MSGSPEC = """\
import sys
from tulle.cli.proxy_run import import_msgspec_alone
import_msgspec_alone()
assert "msgspec" in sys.modules, "msgspec was not imported"
assert "typing_extensions" not in sys.modules, "typing_extensions came with msgspec"
from typing import Annotated
import msgspec
class C(msgspec.Struct, forbid_unknown_fields=True):
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    name: msgspec.UnsetType | str = msgspec.UNSET
assert msgspec.json.decode(b'{"port": 80}', type=C).port == 80
try:
    msgspec.json.decode(b'{"port": 0}', type=C)
except msgspec.ValidationError as exc:
    assert "$.port" in str(exc), exc
else:
    raise AssertionError("a port of 0 was accepted")
import typing_extensions  # a later import still works
for name in ("decimal", "_decimal", "uuid", "_uuid", "platform"):
    assert name not in sys.modules, f"{name} came with msgspec"
import decimal, uuid  # the real ones (ADR 0084)
assert decimal.Decimal("1.5") + 1 == decimal.Decimal("2.5")
assert uuid.UUID(int=1).hex == "0" * 31 + "1" and uuid.uuid4().version == 4
for value in (decimal.Decimal("1.5"), uuid.UUID(int=1)):
    try:
        msgspec.json.encode(value)
    except TypeError as exc:
        assert type(value).__name__ in str(exc), exc  # refused, never written otherwise
    else:
        raise AssertionError(f"msgspec encoded a {type(value).__name__} it cannot know")
    try:
        msgspec.json.decode(msgspec.json.encode(str(value)), type=type(value))
    except msgspec.ValidationError as exc:
        assert type(value).__name__ in str(exc), exc  # a value of that type is refused
    else:
        raise AssertionError(f"msgspec decoded a {type(value).__name__} it cannot know")
print("ok")
"""


def test_msgspec_is_imported_without_typing_extensions_decimal_or_uuid() -> None:
    """The proxy's msgspec runs without `typing_extensions` (ADR 0081), `decimal` and `uuid`
    (ADR 0084): its constraints still hold, the modules can still be imported afterwards by
    whoever needs them, and msgspec refuses a `Decimal` or a `UUID` (to encode, or to decode
    as a field's type) rather than handle it wrongly."""
    out = subprocess.run([sys.executable, "-c", LEAN_MSGSPEC], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
