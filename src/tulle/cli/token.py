"""`tulle token issue | revoke`: bootstrap tokens for proxies (ADR 0028), via the REST API.

`issue` prints the token alone on stdout (so `$(tulle token issue ...)` or `> file` captures
it) and what it grants on stderr; the token is shown this once and is single-use.  Both
commands need an admin API token (`--token`, `TULLE_TOKEN`, ...: see `credentials.py`); API
tokens themselves are `tulle api-token` (`api_tokens.py`).
"""

from __future__ import annotations

import re
import sys

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    """`--label KEY=VALUE` options as a map (a later KEY wins); BadParameter without `=`."""
    from tulle.cli import proxy_run

    try:
        return proxy_run.parse_labels(values)
    except proxy_run.UsageError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.hint) from None


def parse_duration(text: str) -> int:
    """`90s`, `10m`, `1h`, `7d` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use a number and s, m, h or d (e.g. 1h)")
    return int(m.group(1)) * _UNIT[m.group(2)]


REFUSED_CLAIM_EXIT = 2
"""`issue` when the API refuses what the options ask for (422: a workload name that is not a
DNS-1123 subdomain, the control plane's own service account...): a bad option's exit status,
apart from 1 for a control plane that cannot be reached or a token it refuses."""


@click.group("token")
def token() -> None:
    """Bootstrap tokens: what a proxy presents once to get its workload certificate."""


@token.command("issue")
@click.option("--workload", required=True, help="The workload the token may claim.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--service-account", default=None,
              help="Default: the declared Workload's, else `default`.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Labels of the Workload the proxy registers (default: the declared one's).")
@click.option("--ttl", default="1h", show_default=True, help="How long it may be used.")
@server_option
def issue_cmd(workload: str, namespace: str, service_account: str | None,
              labels: tuple[str, ...], ttl: str, server: str | None) -> None:
    """Issue a single-use bootstrap token for one workload."""
    body: dict[str, object] = {"workload": workload, "namespace": namespace,
                               "ttlSeconds": parse_duration(ttl)}
    if service_account:
        body["serviceAccount"] = service_account
    if labels:
        body["labels"] = parse_labels(labels)
    try:
        out = call(server_url(server), "POST", "/api/v1/tokens", body=body)
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(REFUSED_CLAIM_EXIT if exc.status == 422 else 1)
    click.echo(out["token"])
    click.echo(f"token {out['id']}: workload {namespace}/{workload}, service account "
               f"{out['serviceAccount']}, single-use, expires at {out['expiresAt']} "
               f"(unix seconds)", err=True)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.option("-n", "--namespace", default="default", show_default=True)
@server_option
def revoke_cmd(token_id: str, namespace: str, server: str | None) -> None:
    """Revoke an outstanding token by its id (printed by `issue`)."""
    try:
        call(server_url(server), "DELETE", f"/api/v1/tokens/{namespace}/{token_id}")
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"token {token_id} revoked")
