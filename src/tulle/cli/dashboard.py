"""`tulle dashboard`: open the control plane's dashboard in a browser (ADR 0056).

The page is served by the control plane at `/dashboard/`; its data comes from the API with the
same token as the CLI's.  The token goes in the URL *fragment* (`#token=...`): a browser never
sends a fragment to a server, so it reaches no access log or proxy; the page moves it into the
tab's session storage and removes it from the address bar at once.
"""

from __future__ import annotations

import contextlib
import html
import os
import sys
import tempfile
import urllib.parse
import webbrowser
from pathlib import Path

import click

from tulle.cli import credentials
from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option


def dashboard_url(server: str, token: str) -> str:
    url = f"{server}/dashboard/"
    return f"{url}#token={urllib.parse.quote(token, safe='')}" if token else url


def launcher_file() -> Path:
    """Where the page that hands the browser the token is written: the user's runtime dir
    (`$XDG_RUNTIME_DIR/tulle/dashboard.html`), else `~/.cache/tulle/dashboard.html`."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    return Path(base) / "tulle" / "dashboard.html"


def write_launcher(target: str) -> str:
    """A `file://` URL of a page, readable by this user only, that sends the browser on to
    `target` (which holds the token in its fragment).

    Why not `webbrowser.open(target)`: a browser is started with the URL as a command-line
    argument, and every local user can read any process's arguments (`/proc/PID/cmdline`,
    `ps`): the token would be handed to the whole machine while the browser starts
    (attack review A2, ADR 0060).  The page is a meta refresh (no script); the fragment
    travels with it, and the dashboard removes it from the address bar at once."""
    path = launcher_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    page = ("<!doctype html><meta charset=utf-8><meta name=referrer content=no-referrer>"
            f'<meta http-equiv="refresh" content="0;url={html.escape(target)}">'
            "<title>Tulle dashboard</title>\n")
    fd, tmp = tempfile.mkstemp(prefix=".dashboard.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path.as_uri()


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
    if no_browser:
        click.echo(target)
        return
    opened = target if target == dashboard_url(url, "") else write_launcher(target)
    if webbrowser.open(opened):
        click.echo(f"opened {url}/dashboard/ in a browser")
    else:
        click.echo(target)


__all__ = ["dashboard_cmd", "dashboard_url"]
