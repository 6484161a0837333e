"""`tulle version` (this client and the control plane it talks to) and `tulle api-resources`
(the kinds that control plane serves), as `kubectl version` and `kubectl api-resources`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tulle")
    except PackageNotFoundError:
        return "unknown"


@click.command("version")
@click.option("--client", "client_only", is_flag=True, help="This client only; no server call.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@server_option
def version_cmd(client_only: bool, output: str, server: str | None) -> None:
    """The client's version and the control plane's (exit 1 when the server cannot be asked)."""
    import platform

    out: dict[str, Any] = {"client": {"version": _client_version(),
                                      "python": platform.python_version()}}
    failed = None
    if not client_only:
        srv = server_url(server)
        try:
            out["server"] = {**call(srv, "GET", "/api/v1/version", timeout=5), "url": srv}
        except APIError as exc:
            failed = str(exc)
    if output == "json":
        click.echo(json.dumps(out, indent=2))
    else:
        c = out["client"]
        click.echo(f"Client: tulle {c['version']} (Python {c['python']})")
        if "server" in out:
            s = out["server"]
            click.echo(f"Server: tulle {s.get('version')} (Python {s.get('python')}, store "
                       f"{s.get('store')}) at {s['url']}")
    if failed:
        click.echo(f"error: {failed}", err=True)
        sys.exit(1)


@click.command("api-resources")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table")
@server_option
def api_resources_cmd(output: str, server: str | None) -> None:
    """The resource kinds the control plane serves: the names `get`, `apply` and `delete`
    accept (plural, short names, kind), their apiVersion and scope."""
    try:
        items = call(server_url(server), "GET", "/api/v1/api-resources")["resources"]
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(items, indent=2))
        return
    rows = [["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
            + (["ALSO-SERVED-AS"] if output == "wide" else [])]
    for r in items:
        rows.append([r["name"], ",".join(r["shortNames"]), r["apiVersion"],
                     str(r["namespaced"]).lower(), r["kind"]]
                    + ([",".join(r["alsoServed"]) or "-"] if output == "wide" else []))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
