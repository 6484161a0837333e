"""`tulle dashboard`: open the control plane's dashboard in a browser (ADR 0056).

The page is served by the control plane at `/dashboard/`; its data comes from the API with the
same token as the CLI's.  The token goes in the URL *fragment* (`#token=...`): a browser never
sends a fragment to a server, so it reaches no access log or proxy; the page moves it into the
tab's session storage and removes it from the address bar at once.
"""

from __future__ import annotations

import sys
import urllib.parse
import webbrowser

import click

from tulle.cli import credentials
from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option


def dashboard_url(server: str, token: str) -> str:
    url = f"{server}/dashboard/"
    return f"{url}#token={urllib.parse.quote(token, safe='')}" if token else url


@click.command("dashboard")
@click.option("--no-browser", is_flag=True,
              help="Print the URL (with the token in its fragment) instead of opening it.")
@server_option
def dashboard_cmd(no_browser: bool, server: str | None) -> None:
    """Open the dashboard: the live service topology, golden signals per Service, the routes
    and policies of each Service, and a live tap.

    The URL carries the API token in its fragment (never sent to a server).  Exit status 1
    when the control plane cannot be reached or refuses the token.
    """
    url = server_url(server)
    try:
        call(url, "GET", "/api/v1/proxies")  # the token works, before a browser is involved
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    target = dashboard_url(url, credentials.resolve(url) or "")
    if no_browser or not webbrowser.open(target):
        click.echo(target)
    else:
        click.echo(f"opened {url}/dashboard/ in a browser")


__all__ = ["dashboard_cmd", "dashboard_url"]
