"""The `tulle` command.  A thin shell over the library: parse options, call one function.

`tulle proxy` runs a data-plane proxy (from a static file, or subscribed to a control plane)
and validates proxy config files; `tulle control-plane run` runs the control plane;
`apply`, `get`, `delete`, `describe`, `proxy-config` and `explain` talk to its REST API.  Heavy imports
happen inside the commands (LAZY), so `tulle get` loads only what a REST call needs.  A running
proxy does not load this module at all: `tulle.cli.main` hands `tulle proxy run` to
`tulle.cli.proxy_run` before click is imported (ADR 0068).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tulle.cli import proxy_run
from tulle.cli.proxy_run import Opt

F = TypeVar("F", bound=Callable[..., Any])

LAZY: dict[str, tuple[str, str]] = {
    "control-plane": ("tulle.cli.controlplane", "control_plane"),
    "token": ("tulle.cli.token", "token"),
    "apply": ("tulle.cli.resources", "apply_cmd"),
    "get": ("tulle.cli.get", "get_cmd"),
    "delete": ("tulle.cli.delete", "delete_cmd"),
    "describe": ("tulle.cli.resources", "describe_cmd"),
    "proxy-config": ("tulle.cli.resources", "proxy_config_cmd"),
    "api-token": ("tulle.cli.api_tokens", "api_token"),
    "explain": ("tulle.cli.explain.command", "explain_cmd"),
    "ca": ("tulle.cli.ca", "ca"),
    "check": ("tulle.cli.check", "check_cmd"),
    "version": ("tulle.cli.discovery", "version_cmd"),
    "api-resources": ("tulle.cli.discovery", "api_resources_cmd"),
    "iptables": ("tulle.cli.iptables", "iptables"),
    "stat": ("tulle.cli.stat", "stat_cmd"),
    "demo": ("tulle.demo.run", "demo_cmd"),
    "tap": ("tulle.cli.tap", "tap_cmd"),
    "top": ("tulle.cli.top", "top_cmd"),
    "dashboard": ("tulle.cli.dashboard", "dashboard_cmd"),
}
"""Commands imported only when run (or listed by --help): `tulle get` then loads the HTTP
client and `get.py`, not the explain tracer, the proxy config validator or PyYAML (issue:
every CLI call took ~0.7 s; `python -X importtime` shows what each import costs)."""


class _Commands(click.Group):
    """Built-in commands (`proxy`) plus the LAZY table, each module imported on first use."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in LAZY:
            import importlib

            module, attr = LAZY[cmd_name]
            found = getattr(importlib.import_module(module), attr)
            assert isinstance(found, click.Command)
            self.add_command(found, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})


@click.group(cls=_Commands)
@click.version_option(package_name="tulle")
def cli() -> None:
    """Tulle: a service mesh."""


@cli.group()
def proxy() -> None:
    """Run or check a data-plane proxy."""


def _option(opt: Opt) -> Callable[[F], F]:
    """One row of `tulle.cli.proxy_run.OPTIONS` as a click option."""
    kw: dict[str, Any] = {"default": opt.default, "help": opt.help or None,
                          "show_default": opt.show_default, "multiple": opt.multiple,
                          "metavar": opt.metavar, "envvar": opt.envvar}
    if opt.kind == "flag":
        kw["is_flag"] = True
    elif opt.kind == "int":
        kw["type"] = int if opt.low is None and opt.high is None else click.IntRange(
            None if opt.low is None else int(opt.low), None if opt.high is None else int(opt.high))
    elif opt.kind == "float":
        kw["type"] = click.FloatRange(min=opt.low, max=opt.high)
    elif opt.kind == "choice":
        kw["type"] = click.Choice(list(opt.choices))
    elif opt.kind in ("file", "dir"):
        kw["type"] = click.Path(dir_okay=opt.kind == "dir", file_okay=opt.kind == "file")
    return click.option(*opt.flags, opt.dest, **kw)


def _proxy_run(**opts: object) -> None:
    """Run a proxy until SIGTERM, from a static file (--config) or from a control plane
    (--control-plane ... --workload NAME).

    Exit status: 0 after a drain, 1 when it cannot start (e.g. a port in use), 2 for an
    invalid configuration file or options.
    """
    try:
        code = proxy_run.run(opts)
    except proxy_run.UsageError as exc:
        raise click.UsageError(exc.render()) from None
    except proxy_run.StartError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


for _opt in reversed(proxy_run.OPTIONS):
    _proxy_run = _option(_opt)(_proxy_run)
proxy.command("run")(_proxy_run)


@proxy.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def proxy_validate(file: str) -> None:
    """Check a proxy configuration file; print every error with its field path.

    Exit status: 0 when valid, 1 otherwise.
    """
    from tulle.proxyconfig.load import load_file
    from tulle.proxyconfig.validate import ConfigError

    try:
        cfg = load_file(file)
    except ConfigError as exc:
        for e in exc.errors:
            click.echo(f"{file}: {e}", err=True)
        click.echo(f"{file}: {len(exc.errors)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{file}: valid ({len(cfg.listeners)} listeners, {len(cfg.route_tables)} route "
               f"tables, {len(cfg.clusters)} clusters)")
