"""The `tulle` command.  A thin shell over the library: parse options, call one function.

Subcommands that talk to the control plane arrive with the control-plane issue; `tulle proxy`
runs and validates a data-plane proxy from a static file.
"""

from __future__ import annotations

import sys

import click

from tulle.proxyconfig.validate import ConfigError


@click.group()
@click.version_option(package_name="tulle")
def cli() -> None:
    """Tulle: a service mesh."""


@cli.group()
def proxy() -> None:
    """Run or check a data-plane proxy."""


@proxy.command("run")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="Proxy configuration (YAML or JSON, proxyconfig format).")
@click.option("--watch-interval", default=1.0, show_default=True,
              type=click.FloatRange(min=0.0),
              help="Seconds between checks of the config file for changes; 0 disables "
                   "(SIGHUP still reloads).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def proxy_run(config: str, watch_interval: float, log_level: str) -> None:
    """Run a proxy from a static configuration file until SIGTERM.

    Exit status: 0 after a drain, 1 when it cannot start (e.g. a port in use), 2 for an
    invalid configuration file.
    """
    from tulle.dataplane.runner import configure_logging, run

    configure_logging(log_level)
    try:
        code = run(config, watch_interval=watch_interval)
    except ConfigError as exc:
        for e in exc.errors:
            click.echo(f"error: {e}", err=True)
        sys.exit(2)
    sys.exit(code)


@proxy.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def proxy_validate(file: str) -> None:
    """Check a proxy configuration file; print every error with its field path.

    Exit status: 0 when valid, 1 otherwise.
    """
    from tulle.proxyconfig.load import load_file

    try:
        cfg = load_file(file)
    except ConfigError as exc:
        for e in exc.errors:
            click.echo(f"{file}: {e}", err=True)
        click.echo(f"{file}: {len(exc.errors)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{file}: valid ({len(cfg.listeners)} listeners, {len(cfg.route_tables)} route "
               f"tables, {len(cfg.clusters)} clusters)")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
