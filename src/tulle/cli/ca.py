"""`tulle ca rotate`: staged root rotation (ADR 0035).

`tulle ca rotate` drives the control plane through the stages (add-root, reissue, retire),
printing each, waiting between them until every connected proxy has moved; the state is in the
control plane's store, so an interrupted run is resumed by running it again (from any replica).
`--status` shows the stage and the proxies not moved yet; `--step` takes one step only.  With
`--ca-cert` / `--ca-key` the new CA is the operator's (the key file must be mode 0600; it is
sent to the control plane over the API, which keeps it in its store like the CA it makes).

It is a thin client of `/api/v1/ca`; certificate findings are part of `tulle check`
(cli/check.py).
"""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option
from tulle.cli.token import parse_duration

STAGE_SAYS = {
    "add-root": "the new root is being sent to every proxy's trust bundle beside the old one; "
                "the old CA still signs",
    "reissue": "the new CA signs; connected proxies were asked to renew their certificates now",
    "retire": "the old root is being retired: bundles are sent with the new root only, "
              "old-root certificates are refused",
    "idle": "rotation complete: the new CA signs and is the only root; bootstrap tokens "
            "issued before the rotation pin the old CA: issue new ones for proxies not "
            "started yet",
}


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def read_operator_ca(cert_path: str, key_path: str) -> dict[str, str]:
    """The operator's new CA files as the API wants them; refuses a key others can read."""
    key = Path(key_path)
    try:
        mode = key.stat().st_mode
    except OSError as exc:
        raise click.UsageError(f"--ca-key {key_path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise click.UsageError(f"--ca-key {key_path}: mode {stat.S_IMODE(mode):04o} lets "
                               f"others read it; chmod 600 it")
    try:
        return {"certPem": Path(cert_path).read_text(), "keyPem": key.read_text()}
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"cannot read the CA files: {exc}") from None


def _show(st: dict[str, Any]) -> None:
    click.echo(f"stage:        {st['stage']}")
    if st.get("startedAt"):
        click.echo(f"started:      {_when(st['startedAt'])}")
    s = st["signing"]
    click.echo(f"signing CA:   {s['subject']} ({s['fingerprint'][:16]}), expires "
               f"{_when(s['notAfter'])}")
    if st.get("next"):
        click.echo(f"next CA:      {st['next']['subject']} ({st['next']['fingerprint'][:16]})")
    click.echo(f"trust bundle: {st['trustBundle']}")
    for r in st["roots"]:
        click.echo(f"  root        {r['subject']} ({r['fingerprint'][:16]}), expires "
                   f"{_when(r['notAfter'])}")
    if st.get("waitingFor"):
        click.echo(f"waiting for:  {st['waitingFor']}")
    for p in st.get("notMoved") or []:
        click.echo(f"  not moved   {p['proxy']}: {p['reason']}")
    if st["stage"] != "idle" and st.get("canAdvance"):
        click.echo("every connected proxy has moved: `tulle ca rotate` takes the next stage")


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@click.group("ca")
def ca() -> None:
    """The mesh certificate authority."""


@ca.command("rotate")
@click.option("--status", "show_status", is_flag=True,
              help="Show the stage and the proxies not moved yet; change nothing.")
@click.option("--ca-cert", default=None, type=click.Path(dir_okay=False),
              help="The new CA's certificate (chain ending with its root); default: a new "
                   "self-signed P-256 root made by the control plane.")
@click.option("--ca-key", default=None, type=click.Path(dir_okay=False),
              help="The new CA's private key (P-256, PEM, file mode 0600).")
@click.option("--step", is_flag=True, help="Take one step (start or advance) and return.")
@click.option("--timeout", default="10m", show_default=True,
              help="How long to wait for proxies to move at each stage.")
@click.option("--force", is_flag=True,
              help="Advance even if connected proxies have not moved (their mTLS may fail).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@server_option
def rotate_cmd(show_status: bool, ca_cert: str | None, ca_key: str | None, step: bool,
               timeout: str, force: bool, output: str, server: str | None) -> None:
    """Rotate the mesh root in stages (add the new root, re-issue, retire the old root).

    Resumable: run it again after an interruption.  Exit status 0 when the rotation is
    complete (or, with --step/--status, the step was taken / shown), 1 otherwise.
    """
    srv = server_url(server)
    if bool(ca_cert) != bool(ca_key):
        raise click.UsageError("give both --ca-cert and --ca-key, or neither")
    try:
        st = call(srv, "GET", "/api/v1/ca")
        if show_status:
            if output == "json":
                click.echo(json.dumps(st, indent=2))
            else:
                _show(st)
            return
        if st["stage"] == "idle":
            body = read_operator_ca(ca_cert, ca_key) if ca_cert and ca_key else {}
            st = call(srv, "POST", "/api/v1/ca/rotation", body=body)
            _say(st)
            if step:
                return
        elif ca_cert:
            _fail(f"a rotation is already at stage {st['stage']}; --ca-cert applies to a new "
                  f"rotation only (see `tulle ca rotate --status`)")
        else:
            click.echo(f"resuming the rotation at stage {st['stage']}")
        limit = parse_duration(timeout)
        while st["stage"] != "idle":
            st = _wait_moved(srv, st, limit, force)
            st = call(srv, "POST", "/api/v1/ca/rotation/advance",
                      query={"force": "true" if force else None})
            _say(st)
            if step:
                return
    except APIError as exc:
        _fail(str(exc))


def _say(st: dict[str, Any]) -> None:
    click.echo(f"stage {st['stage']}: {STAGE_SAYS.get(st['stage'], '')} "
               f"(trust bundle {st['trustBundle']})")


def _wait_moved(srv: str, st: dict[str, Any], limit: int, force: bool) -> dict[str, Any]:
    """Poll until every connected proxy has moved at this stage (bounded by `limit`)."""
    deadline = time.monotonic() + limit
    shown: list[str] = []
    while not st.get("canAdvance") and not force:
        pending = [p["proxy"] for p in st.get("notMoved") or []]
        if pending != shown:
            click.echo(f"  waiting for {len(pending)} prox{'y' if len(pending) == 1 else 'ies'}"
                       f": {', '.join(pending[:10])}")
            shown = pending
        if time.monotonic() >= deadline:
            _fail(f"stage {st['stage']}: proxies have not moved within the timeout; see "
                  f"`tulle ca rotate --status`, then run `tulle ca rotate` again to resume")
        time.sleep(0.2)
        st = call(srv, "GET", "/api/v1/ca")
    return st
