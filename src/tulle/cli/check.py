"""`tulle check` (like `linkerd check` and `istioctl analyze`): what is wrong with the mesh,
where, and what to do.  `--pre` checks this machine instead (cli/preflight.py).

The findings come from the control plane (`GET /api/v1/check`, controlplane/check/): the
store, resources not (wholly) in force, proxies NACKing or out of sync (named), workloads whose
proxy has gone, certificate and trust-anchor expiry, a CA rotation half done.  Exit status 1
when any finding is an error (or the control plane cannot be reached, or refuses the token),
0 otherwise; `-o json` prints the whole answer for scripts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tulle.cli import credentials
from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option
from tulle.cli.style import paint


def _print(findings: list[dict[str, Any]], checked: list[str], where: str) -> None:
    click.echo(f"checked {where}: {', '.join(checked)}")
    if not findings:
        click.echo(paint("no findings", "green"))
        return
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        sev = paint(f"{f['severity'].upper():8}", colour.get(f["severity"], ""))
        click.echo(f"{sev} {f['code']:18} {f['object']}: {f['message']}")
        if f.get("hint"):
            click.echo(f"{'':9}{'':18} hint: {f['hint']}")
    errors = sum(1 for f in findings if f["severity"] == "error")
    click.echo(f"{errors} error(s), {len(findings) - errors} warning(s)")


def not_answered(exc: APIError) -> dict[str, str]:
    """The finding for a check the control plane did not answer.  A 401 or 403 is an answer:
    the control plane is up and refused the token, so telling the user to start it would send
    them the wrong way; `Unauthorized` says where `tulle` took the token from instead."""
    if exc.status in (401, 403):
        return {"severity": "error", "code": "Unauthorized", "object": "control plane",
                "message": str(exc),
                "hint": f"`tulle` sends the first token it finds: --token, TULLE_TOKEN, "
                        f"TULLE_TOKEN_FILE, {credentials.user_token_file()}, then (local "
                        f"control plane only) its admin token file; give a valid one (an "
                        f"admin makes one with `tulle api-token create`)"}
    return {"severity": "error", "code": "Unreachable", "object": "control plane",
            "message": str(exc),
            "hint": "start it (`tulle control-plane run`) or point --server / TULLE_SERVER "
                    "at it"}


@click.command("check")
@click.option("--pre", is_flag=True,
              help="Check this machine before installing or starting anything (Python, "
                   "native modules, iptables, privileges, the default ports); no control "
                   "plane needed.")
@click.option("--root-warn-days", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Warn when a root or the signing CA expires within this many days.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@server_option
def check_cmd(pre: bool, root_warn_days: float, output: str, server: str | None) -> None:
    """Check the mesh: the store, resources not in force, proxies out of sync or NACKing,
    workloads whose proxy has gone, certificate expiry, a CA rotation half done.

    Exit status 1 when a finding is an error, else 0.
    """
    if pre:
        from tulle.cli.preflight import checks

        findings, checked = checks()
        out: dict[str, Any] = {"findings": findings, "checked": checked}
        where = "this machine"
    else:
        srv = server_url(server)
        try:
            out = call(srv, "GET", "/api/v1/check", query={"rootWarnDays": root_warn_days})
        except APIError as exc:
            out = {"findings": [not_answered(exc)], "checked": ["control plane"]}
        findings, checked = out["findings"], out.get("checked") or []
        where = srv
    if output == "json":
        click.echo(json.dumps(out, indent=2))
    else:
        _print(findings, checked, where)
    sys.exit(1 if any(f["severity"] == "error" for f in findings) else 0)
