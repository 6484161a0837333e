"""`tulle delete`: by kind and names, by the objects in files (`-f`, as `apply` reads them), by
label selector (`-l`), or every object of a kind in a namespace (`--all`), like kubectl.

Each deletion is its own API call (the API deletes one object per request); every one is
tried, each failure printed, and the exit status is 1 when any failed.  `--ignore-not-found`
makes an object already gone a success, as `kubectl delete --ignore-not-found`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import _fail, _read_documents, server_option


def _targets_from_files(files: tuple[str, ...]) -> list[tuple[str, str | None, str]]:
    docs, sources = _read_documents(files)
    out: list[tuple[str, str | None, str]] = []
    for doc, src in zip(docs, sources, strict=True):
        md = doc.get("metadata") if isinstance(doc, dict) else None
        if not isinstance(md, dict) or not doc.get("kind") or not md.get("name"):
            raise click.UsageError(f"{src}: needs kind and metadata.name to be deleted")
        out.append((str(doc["kind"]), md.get("namespace"), str(md["name"])))
    return out


@click.command("delete")
@click.argument("type_", metavar="[TYPE]", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True,
              help="Delete the objects in this file, directory, or - for stdin (repeatable).")
@click.option("-n", "--namespace", default=None)
@click.option("-A", "--all-namespaces", is_flag=True, help="With -l or --all: every namespace.")
@click.option("-l", "--selector", default=None, help="Delete the TYPE objects with these labels.")
@click.option("--all", "every", is_flag=True, help="Delete every TYPE object in the namespace.")
@click.option("--ignore-not-found", is_flag=True, help="An object already gone is not an error.")
@server_option
def delete_cmd(type_: str | None, names: tuple[str, ...], files: tuple[str, ...],
               namespace: str | None, all_namespaces: bool, selector: str | None, every: bool,
               ignore_not_found: bool, server: str | None) -> None:
    """Delete resources: TYPE NAME..., -f FILE, TYPE -l SELECTOR, or TYPE --all."""
    ways = sum(bool(x) for x in (names, files, selector, every))
    if ways != 1:
        raise click.UsageError("give exactly one of: NAME..., -f FILE, -l SELECTOR, --all")
    if files and type_:
        raise click.UsageError("with -f, no TYPE: the files say what to delete")
    if not files and not type_:
        raise click.UsageError("TYPE is required (e.g. `tulle delete svc NAME`)")
    srv = server_url(server)
    targets: list[tuple[str, str | None, str]]
    if files:
        targets = _targets_from_files(files)
    elif names:
        assert type_ is not None
        targets = [(type_, namespace, n) for n in names]
    else:
        assert type_ is not None
        ns = None if all_namespaces else (namespace or "default")
        try:
            items: list[dict[str, Any]] = call(
                srv, "GET", f"/api/v1/resources/{type_}",
                query={"namespace": ns, "labelSelector": selector})["items"]
        except APIError as exc:
            _fail(exc)
            return
        targets = [(str(o["kind"]), (o.get("metadata") or {}).get("namespace"),
                    str(o["metadata"]["name"])) for o in items]
        if not targets:
            click.echo("No resources found.", err=True)
            return
    failed = False
    for kind, ns_, name in targets:
        ident = f"{kind.lower()}/{name}" + (f" -n {ns_}" if ns_ else "")
        try:
            obj = call(srv, "DELETE", f"/api/v1/resources/{kind}/{name}",
                       query={"namespace": ns_})
            click.echo(f"{obj['kind'].lower()}/{name} deleted")
        except APIError as exc:
            if exc.status == 404 and ignore_not_found:
                continue
            click.echo(f"error: {ident}: {exc}", err=True)
            failed = True
    if failed:
        sys.exit(1)
