"""The `tulle` command.  A thin shell over the library: parse options, call one function.

`tulle proxy` runs a data-plane proxy (from a static file, or subscribed to a control plane)
and validates proxy config files; `tulle control-plane run` runs the control plane;
`apply`, `get`, `delete`, `describe`, `proxy-config` and `explain` talk to its REST API.  Heavy imports
happen inside the commands (LAZY), so `tulle proxy run` loads only what a proxy needs and
`tulle get` only what a REST call needs.
"""

from __future__ import annotations

import sys

import click

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


@proxy.command("run")
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="Proxy configuration (YAML or JSON, proxyconfig format).")
@click.option("--control-plane", "control_planes", multiple=True, metavar="HOST:PORT",
              help="Subscribe to this control plane's proxy stream instead of reading a file "
                   "(repeat for replicas; tried in order).")
@click.option("--workload", default=None, help="With --control-plane: the workload's name.")
@click.option("--node-config", default=None, type=click.Path(dir_okay=False),
              help="With --control-plane, instead of --workload: run as a node agent for "
                   "every workload this file lists, each with its own token (ADR 0047).")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--address", default="", help="The workload's address (default: as seen by the "
                                            "control plane).")
@click.option("--port", "ports", multiple=True, metavar="NAME:PORT[:TARGET[:APP_PROTOCOL]]",
              help="A workload port: the proxy listens on PORT, the app on 127.0.0.1:TARGET.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--service-account", default="default", show_default=True)
@click.option("--outbound-port", default=0, type=int,
              help="Loopback port of the outbound listener (default 15001).")
@click.option("--dns-port", default=0, type=click.IntRange(0, 65535),
              help="Loopback port of the mesh DNS resolver (15053 in a pod whose port 53 "
                   "`tulle iptables` redirects); 0: no resolver.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the last good snapshot here, to serve it after a restart even when "
                   "the control plane is down.")
@click.option("--admin-port", default=15000, show_default=True, type=int,
              help="With --control-plane: the admin port (0 disables).")
@click.option("--watch-interval", default=1.0, show_default=True,
              type=click.FloatRange(min=0.0),
              help="Seconds between checks of the config file for changes; 0 disables "
                   "(SIGHUP still reloads).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              envvar="TULLE_BOOTSTRAP_TOKEN_FILE",
              help="With --control-plane: a file holding the bootstrap token (tulle token "
                   "issue); also read from $TULLE_BOOTSTRAP_TOKEN.  Not $TULLE_TOKEN_FILE: "
                   "that is the CLI's API token, which must never go to the stream.")
@click.option("--ca-file", default=None, type=click.Path(dir_okay=False),
              envvar="TULLE_STREAM_CA_FILE",
              help="With --control-plane: the mesh CA certificate(s) (PEM) to verify the "
                   "control plane by, instead of the pin in the bootstrap token.")
@click.option("--stream-plaintext", is_flag=True, default=False,
              help="With --control-plane: talk to a control plane run with "
                   "--stream-plaintext (no TLS; development only).  Logged as insecure.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def proxy_run(config: str | None, control_planes: tuple[str, ...], workload: str | None,
              namespace: str, address: str, ports: tuple[str, ...], labels: tuple[str, ...],
              service_account: str, outbound_port: int, cache_dir: str | None,
              admin_port: int,
              watch_interval: float, token_file: str | None, ca_file: str | None,
              stream_plaintext: bool, log_level: str, dns_port: int,
              node_config: str | None = None) -> None:
    """Run a proxy until SIGTERM, from a static file (--config) or from a control plane
    (--control-plane ... --workload NAME).

    Exit status: 0 after a drain, 1 when it cannot start (e.g. a port in use), 2 for an
    invalid configuration file or options.
    """
    from tulle.dataplane.runner import configure_logging, run
    from tulle.proxyconfig.validate import ConfigError

    configure_logging(log_level)
    if bool(config) == bool(control_planes):
        raise click.UsageError("give exactly one of --config FILE or --control-plane ADDR")
    if control_planes:
        if bool(workload) == bool(node_config):
            raise click.UsageError("--control-plane needs --workload NAME or --node-config FILE")
        from tulle.cli.controlplane import run_subscribed

        if node_config:
            from tulle.cli.controlplane import run_node

            sys.exit(run_node(control_planes, node_config, cache_dir, admin_port, ca_file,
                              stream_plaintext))
        assert workload is not None

        sys.exit(run_subscribed(control_planes, workload, namespace, address, ports, labels,
                                service_account, outbound_port, cache_dir, admin_port,
                                token_file, ca_file, stream_plaintext, dns_port=dns_port))
    assert config is not None
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
