"""kubectl-like commands against the control plane: apply, describe, proxy-config (get.py and
delete.py hold `get` and `delete`).

Files are read and split here (multi-document YAML or JSON, a directory, or `-` for stdin);
validation happens on the server, which refuses the whole request if any document is invalid
and reports each error with its document, source and field path.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tulle.cli import credentials
from tulle.cli.client import APIError, call, server_url
from tulle.cli.output import emit, table

_server_option = click.option("--server", envvar="TULLE_SERVER", default=None,
                              help="Control-plane API URL (default http://127.0.0.1:15681).")
_token_option = click.option(
    "--token", envvar="TULLE_TOKEN", default=None, expose_value=False,
    callback=lambda _ctx, _param, value: credentials.set_explicit(value),
    help="API token (default: TULLE_TOKEN, TULLE_TOKEN_FILE, ~/.config/tulle/token, or for a "
         "local control plane the admin token file it wrote).")


def server_option(f: Any) -> Any:
    """`--server` and `--token`: where the API is and what to send it."""
    return _server_option(_token_option(f))


def _fail(exc: APIError) -> None:
    """Print the API's refusal and exit 1.  Per-document errors read as the library's
    (`tulle.api.load_path`, docs/reference/resources.md): `FILE, document N (Kind ns/name):
    path: reason`."""
    click.echo(f"error: {exc}", err=True)
    for d in exc.body.get("details") or []:
        src = str(d.get("source") or "")
        file, sep, index = src.rpartition("#")
        where = f"{file}, document {index}" if sep else (src or f"document {d.get('document')}")
        name = f"{d['namespace']}/{d.get('name') or '?'}" if d.get("namespace") \
            else str(d.get("name") or "?")
        what = f"{d.get('kind') or '?'} {name}"
        for e in d.get("errors") or []:
            click.echo(f"  {where} ({what}): {e.get('path') or '<root>'}: {e.get('message')}",
                       err=True)
    sys.exit(1)


def _read_documents(paths: tuple[str, ...]) -> tuple[list[Any], list[str]]:
    """Every document of the inputs, each read with bounds (`tulle.api.safeyaml`): an alias
    bomb or an oversized input is refused here, in milliseconds, before anything is sent."""
    import yaml

    from tulle.api import safeyaml
    from tulle.api.io import read_bounded

    limit = safeyaml.DEFAULT_LIMITS.max_bytes
    files: list[tuple[str, str]] = []
    try:
        for p in paths:
            if p == "-":
                text = sys.stdin.read(limit + 1)
                if len(text) > limit:
                    raise ValueError(f"<stdin>: larger than {limit} bytes")
                files.append(("<stdin>", text))
                continue
            path = Path(p)
            if path.is_dir():
                for f in sorted(path.rglob("*")):
                    if f.suffix in (".yaml", ".yml", ".json") and f.is_file():
                        files.append((str(f), read_bounded(f)))
            elif path.is_file():
                files.append((str(path), read_bounded(path)))
            else:
                raise click.UsageError(f"{p}: no such file or directory")
    except (ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    docs: list[Any] = []
    sources: list[str] = []
    for name, text in files:
        try:
            for i, d in enumerate(safeyaml.load_all(text)):
                if d is None:
                    continue
                if _is_list(d):
                    for j, item in enumerate(d["items"]):
                        docs.append(item)
                        sources.append(f"{name}#{i}.items[{j}]")
                else:
                    docs.append(d)
                    sources.append(f"{name}#{i}")
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            click.echo(f"error: {name}: invalid YAML{where}: "
                       f"{getattr(exc, 'problem', None) or exc}", err=True)
            sys.exit(1)
    return docs, sources


def _is_list(doc: Any) -> bool:
    """`kind: List` (what `tulle get -o yaml` prints) or a typed list (`HTTPRouteList`, what
    the REST API answers), as kubectl reads both."""
    return (isinstance(doc, dict) and isinstance(doc.get("kind"), str)
            and doc["kind"].endswith("List") and isinstance(doc.get("items"), list))


@click.command("apply")
@click.option("-f", "--filename", "files", multiple=True, required=True,
              help="File, directory, or - for stdin (repeatable).")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change.")
@click.option("--strict", is_flag=True,
              help="Refuse the whole apply (nothing stored) if anything in it would be stored "
                   "but not enforced; without it, that is a printed warning.")
@server_option
def apply_cmd(files: tuple[str, ...], dry_run: bool, strict: bool, server: str | None) -> None:
    """Create or update resources from files.  Idempotent; all-or-nothing on invalid input.

    Whatever would be stored but not (wholly) enforced — a rule left out, a backend not found,
    a policy the data plane does not enforce yet, a Mesh value the proxies cannot take, a
    feature that a connected proxy of an older build lacks — is printed as a `Warning:` line
    on stderr (an error with --strict)."""
    docs, sources = _read_documents(files)
    if not docs:
        raise click.UsageError("no documents found")
    if len(docs) > 1 and sys.stderr.isatty():
        files_read = len({s.rsplit("#", 1)[0] for s in sources})
        click.echo(f"applying {len(docs)} documents from {files_read} file(s)...", err=True)
    try:
        out = call(server_url(server), "POST", "/api/v1/apply",
                   query={"dryRun": dry_run, "strict": strict},
                   body={"documents": docs, "sources": sources})
    except APIError as exc:
        if exc.status == 409 and "results" in exc.body:
            _print_results(exc.body["results"])
        _fail(exc)
        return
    _print_results(out["results"])


def _print_results(results: list[dict[str, Any]]) -> None:
    from tulle.cli.style import paint

    colour = {"created": "green", "configured": "cyan", "unchanged": "dim"}
    for r in results:
        ident = f"{r['kind'].lower()}/{r['name']}"
        if r.get("namespace"):
            ident += f" -n {r['namespace']}"
        suffix = " (dry run)" if r.get("dryRun") else ""
        line = f"{ident} {paint(str(r['result']), colour.get(str(r['result']), ''))}{suffix}"
        if r.get("error"):
            line += f": {r['error']}"
        click.echo(line)
    warned = 0
    for r in results:
        ident = f"{r['kind'].lower()}/{r['name']}"
        if r.get("namespace"):
            ident += f" -n {r['namespace']}"
        for w in r.get("warnings") or []:
            warned += 1
            click.echo(f"{paint('Warning:', 'yellow')} {ident}: {w}", err=True)
    if len(results) > 1:
        counts: dict[str, int] = {}
        for r in results:
            counts[str(r["result"])] = counts.get(str(r["result"]), 0) + 1
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        click.echo(f"{len(results)} objects: {summary}"
                   + (f"; {warned} warning(s) above" if warned else ""), err=True)


@click.command("describe")
@click.argument("type_", metavar="TYPE")
@click.argument("name")
@click.option("-n", "--namespace", default=None)
@server_option
def describe_cmd(type_: str, name: str, namespace: str | None, server: str | None) -> None:
    """Show a resource with its status conditions; for a Workload, its proxy; for a Service,
    its endpoints, attached routes and policies, and what each proxy got for it."""
    import yaml

    srv = server_url(server)
    try:
        obj = call(srv, "GET", f"/api/v1/resources/{type_}/{name}",
                   query={"namespace": namespace})
    except APIError as exc:
        _fail(exc)
        return
    md = obj.get("metadata") or {}
    click.echo(f"Name:         {md.get('name')}")
    if md.get("namespace"):
        click.echo(f"Namespace:    {md.get('namespace')}")
    click.echo(f"Kind:         {obj.get('kind')} ({obj.get('apiVersion')})")
    click.echo(f"Version:      resourceVersion {md.get('resourceVersion')}, "
               f"generation {md.get('generation')}")
    for label, key in (("Labels", "labels"), ("Annotations", "annotations")):
        vals = md.get(key) or {}
        click.echo(f"{label + ':':<14}" + (", ".join(f"{k}={v}" for k, v in sorted(vals.items()))
                                           or "<none>"))
    click.echo("Spec:")
    click.echo("  " + yaml.safe_dump(obj.get("spec") or {}, sort_keys=False).rstrip()
               .replace("\n", "\n  "))
    from tulle.api.conditions import found

    status = {k: v for k, v in (obj.get("status") or {}).items()
              if k not in ("conditions", "parents")}
    if status:
        click.echo("Status:")
        click.echo("  " + yaml.safe_dump(status, sort_keys=False).rstrip().replace("\n", "\n  "))
    conds = list(found(obj))
    click.echo("Conditions:" + ("" if conds else " <none>"))
    for f in conds:
        since = f.condition.get("lastTransitionTime")
        click.echo(f"  {f.line()}" + (f" (since {since})" if since else ""))
    _describe_skew(srv, type_, name, namespace)
    if obj.get("kind") == "Service":
        from tulle.cli.describe_service import describe_service

        describe_service(srv, obj)
    if obj.get("kind") == "Workload":
        try:
            proxies = call(srv, "GET", "/api/v1/proxies")["items"]
        except APIError:
            proxies = []
        for p in proxies:
            if p["namespace"] == md.get("namespace") and p["name"] == md.get("name"):
                nack = p.get("lastNack")
                click.echo(f"Proxy:        {'connected' if p.get('connected') else 'not connected'}"
                           f", acked {p.get('ackedVersion') or '-'}, desired "
                           f"{p.get('desiredVersion') or '-'}"
                           + (f", protocol {p['protocol']}" if p.get("protocol") else "")
                           + (f", last NACK {nack['version']}: {nack['reason']}" if nack else "")
                           + (f", config error: {p['configError']}" if p.get("configError")
                              else ""))
                if p.get("connected"):
                    click.echo(f"Features:     {', '.join(p.get('features') or []) or '<none>'}")
                    withheld = p.get("withheld") or []
                    used = set(p.get("withheldInUse") or ())
                    click.echo("Withheld:     " + ("; ".join(
                        f"{w['feature']} ({', '.join(w['paths']) or 'its items'})"
                        + (": used by its config, not in force" if w["feature"] in used
                           else "") for w in withheld)
                        or "<none>"))


def _describe_skew(srv: str, type_: str, name: str, namespace: str | None) -> None:
    """What the object puts in use at connected proxies of an older build (ADR 0131): said
    only while such a proxy is connected."""
    try:
        out = call(srv, "GET", f"/api/v1/resources/{type_}/{name}/skew",
                   query={"namespace": namespace}, timeout=120.0)
    except APIError as exc:
        if exc.status == 404:
            return  # gone since, or a control plane older than this question
        click.echo(f"Older proxies: not known ({exc.body.get('error') or exc.status})")
        return
    older = int(out.get("olderProxies") or 0)
    if not older:
        return
    lines = out.get("warnings") or []
    head = f"Older proxies: {older} connected lacking features"
    click.echo(head + ("; this object puts none of them in use" if not lines
                       else "; what they do not run of this object's config:"))
    for line in lines:
        click.echo(f"  {line}")


SECTIONS = {"listeners": "listeners", "routes": "route_tables", "clusters": "clusters",
            "endpoints": "clusters"}


@click.command("proxy-config")
@click.argument("workload", metavar="WORKLOAD[.NAMESPACE]")
@click.argument("section", required=False,
                type=click.Choice(["all", "listeners", "routes", "clusters", "endpoints",
                                   "dns"]),
                default="all")
@click.option("-n", "--namespace", default=None,
              help="The workload's namespace (default: the one after a dot, else default).")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table")
@server_option
def proxy_config_cmd(workload: str, section: str, namespace: str | None, output: str,
                     server: str | None) -> None:
    """What a workload's proxy runs: the snapshot it ACKed last (the desired one until it has
    ACKed any), fetched through the control plane.  `web-0.shop` is `web-0 -n shop`, as
    istioctl takes it (with -n, a dot belongs to the name); `all` as a table prints every
    section's table."""
    name, dot, ns_in_name = workload.rpartition(".")
    if namespace is None and dot and name:  # (with -n, a dot is part of the name)
        workload, namespace = name, ns_in_name
    namespace = namespace or "default"
    try:
        out = call(server_url(server), "GET", f"/api/v1/proxies/{namespace}/{workload}/config")
    except APIError as exc:
        _fail(exc)
        return
    cfg = out["config"]
    if section == "dns":
        _dns_section(cfg, output)
        return
    if output != "table":
        emit(cfg if section == "all" else cfg.get(SECTIONS[section], []), output)
        return
    shown = "running (acked)" if out.get("source") == "acked" else "desired (not acked yet)"
    admin = cfg.get("admin") or {}
    click.echo(f"# {namespace}/{workload}: {shown} {cfg.get('version')}; desired "
               f"{out.get('desiredVersion') or '-'}, acked {out.get('ackedVersion') or '-'}; "
               f"admin " + (f"{admin.get('address', '127.0.0.1')}:{admin.get('port')}"
                            if admin.get("port") else "disabled"))
    parts = ["listeners", "routes", "clusters", "endpoints"] if section == "all" else [section]
    for i, part in enumerate(parts):
        if section == "all":
            click.echo(("\n" if i else "") + f"{part.upper()}:")
        _section_table(part, cfg.get(SECTIONS[part], []))


def _section_table(section: str, data: list[dict[str, Any]]) -> None:
    if section == "listeners":
        rows = [["NAME", "ADDRESS", "DIRECTION", "PROTOCOL", "TARGET"]]
        for lst in data:
            rows.append([lst["name"], f"{lst['address']}:{lst['port']}", lst["direction"],
                         lst["protocol"], lst.get("route_table") or lst.get("cluster") or "-"])
    elif section == "routes":
        rows = [["TABLE", "HOST", "DOMAINS", "MATCH", "BACKENDS"]]
        for t in data:
            for vh in t["virtual_hosts"]:
                for r in vh["rules"]:
                    for m in r["matches"]:
                        rows.append([t["name"], vh["name"], ",".join(vh["domains"][:3])
                                     + ("..." if len(vh["domains"]) > 3 else ""),
                                     f"{m['path']['type']} {m['path']['value']}",
                                     ",".join(f"{b['cluster']}({b['weight']})"
                                              for b in r["backends"])])
    elif section == "clusters":
        rows = [["NAME", "PROTOCOL", "LB", "ENDPOINTS"]]
        for c in data:
            rows.append([c["name"], c["protocol"], c["lb_policy"], str(len(c["endpoints"]))])
    else:
        rows = [["CLUSTER", "ENDPOINT", "WEIGHT", "ZONE"]]
        for c in data:
            for e in c["endpoints"]:
                rows.append([c["name"], f"{e['address']}:{e['port']}", str(e["weight"]),
                             e.get("zone") or "-"])
    if len(rows) == 1:
        click.echo("  <none>")
        return
    table(rows)


def _dns_section(cfg: dict[str, Any], output: str) -> None:
    """`proxy-config WORKLOAD dns`: the resolver's port and upstreams, and each Service's
    names as this proxy answers them (ADR 0042)."""
    # (the CLI imports the contract lazily)
    from tulle.proxyconfig.dns import empty_names, names_of

    d = cfg.get("dns")
    if output != "table":
        emit(d, "json" if output == "json" else "yaml")
        return
    if not d:
        click.echo("# no mesh DNS resolver (Workload spec.dnsPort not set)")
        return
    ups = ", ".join(d.get("upstreams") or []) or f"from {d.get('resolv_conf')}"
    click.echo(f"# resolver {d['address']}:{d['port']}, ttl {d['ttl_s']}s, upstreams: {ups}")
    local = (cfg.get("node") or {}).get("namespace", "")
    rows = [["NAME", "ADDRESSES"]]
    seen: list[bytes] = []
    for h in d.get("hosts") or []:
        for n in names_of(h["service"], h["namespace"], d["domain"], d["mesh_domain"], local):
            rows.append([n, ",".join(h["addresses"])])
            seen.append(n.encode())
    # The names that exist only because names below them do: answered NODATA, not NXDOMAIN
    # (RFC 8020), as the proxy's table holds them (ADR 0095).
    for e in sorted(empty_names(seen, d["domain"], d["mesh_domain"])):
        rows.append([e.decode(), "- (no records: NODATA)"])
    table(rows)


COMMANDS = [apply_cmd, describe_cmd, proxy_config_cmd]
