"""`tulle api-token create | list | revoke`: the REST API's tokens (admin only).

`create` prints the new token alone on stdout (so `T=$(tulle api-token create --role read-only)`
works) and its id and role on stderr; it is the one time the token is shown.  `revoke` takes
the id or the whole token.  Proxies' bootstrap tokens are another thing (`tulle token`,
`token.py`).
"""

from __future__ import annotations

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import _fail, server_option


@click.group("api-token")
def api_token() -> None:
    """Create, list and revoke API tokens (needs an admin token)."""


@api_token.command("create")
@click.option("--role", required=True, type=click.Choice(["read-only", "admin"]),
              help="read-only: GET only; admin: everything.")
@click.option("--name", default="", help="A label for people (who or what holds it).")
@server_option
def create_cmd(role: str, name: str, server: str | None) -> None:
    """Create a token and print it (once: it cannot be read back)."""
    try:
        out = call(server_url(server), "POST", "/api/v1/api-tokens",
                   body={"role": role, "name": name})
    except APIError as exc:
        _fail(exc)
        return
    click.echo(f"token {out['id']} ({out['role']}) created; it is shown only now", err=True)
    click.echo(out["token"])


@api_token.command("list")
@server_option
def list_cmd(server: str | None) -> None:
    """Tokens by id, name, role and creation time (never the tokens)."""
    try:
        items = call(server_url(server), "GET", "/api/v1/api-tokens")["items"]
    except APIError as exc:
        _fail(exc)
        return
    rows = [["ID", "ROLE", "CREATED", "NAME"]] + [
        [t["id"], t["role"], t["created"], t["name"]] for t in items]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@api_token.command("revoke")
@click.argument("token_or_id")
@server_option
def revoke_cmd(token_or_id: str, server: str | None) -> None:
    """Revoke a token (by id or the token itself); refused from the next request on."""
    from tulle.cli.credentials import token_id

    tid = token_id(token_or_id) or token_or_id
    try:
        out = call(server_url(server), "DELETE", f"/api/v1/api-tokens/{tid}")
    except APIError as exc:
        _fail(exc)
        return
    click.echo(f"token {out['id']} ({out['role']}) revoked")
