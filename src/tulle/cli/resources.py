"""kubectl-like commands against the control plane: apply, get, delete, describe, proxy-config.

Files are read and split here (multi-document YAML or JSON, a directory, or `-` for stdin);
validation happens on the server, which refuses the whole request if any document is invalid
and reports each error with its document, source and field path.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from tulle.cli import credentials
from tulle.cli.client import APIError, call, server_url

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
    click.echo(f"error: {exc}", err=True)
    for d in exc.body.get("details") or []:
        where = d.get("source") or f"document {d.get('document')}"
        what = f"{d.get('kind') or '?'} {d.get('name') or '?'}"
        for e in d.get("errors") or []:
            click.echo(f"  {where}: {what}: {e.get('path') or '<root>'}: {e.get('message')}",
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
    a policy the data plane does not enforce yet, a Mesh value the proxies cannot take — is
    printed as a `Warning:` line on stderr (an error with --strict)."""
    docs, sources = _read_documents(files)
    if not docs:
        raise click.UsageError("no documents found")
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
    for r in results:
        ident = f"{r['kind'].lower()}/{r['name']}"
        if r.get("namespace"):
            ident += f" -n {r['namespace']}"
        suffix = " (dry run)" if r.get("dryRun") else ""
        line = f"{ident} {r['result']}{suffix}"
        if r.get("error"):
            line += f": {r['error']}"
        click.echo(line)
    for r in results:
        ident = f"{r['kind'].lower()}/{r['name']}"
        if r.get("namespace"):
            ident += f" -n {r['namespace']}"
        for w in r.get("warnings") or []:
            click.echo(f"Warning: {ident}: {w}", err=True)


def _age(md: dict[str, Any]) -> str:
    ts = md.get("creationTimestamp")
    if not ts:
        return "-"
    try:
        t = time.mktime(time.strptime(str(ts)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    except ValueError:
        return "-"
    s = max(0, int(time.time() - t))  # noqa: TID251 - wall clock for display
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _proxy_state(proxy: Any) -> str:
    """A Workload's proxy as `get workloads` shows it (ADR 0040): `-` never connected,
    `connected`, or why and since when its endpoints are out."""
    if not isinstance(proxy, dict):
        return "-"
    if proxy.get("state") == "Connected":
        return "connected"
    age = _age({"creationTimestamp": proxy.get("since")})
    ago = f" {age} ago" if age != "-" else ""
    return f"disconnected{ago}, out of endpoints: {proxy.get('reason') or '?'}"


def _accepted(obj: dict[str, Any]) -> list[tuple[str, str]]:
    from tulle.api.conditions import summary

    accepted, reason = summary(obj)
    return [("ACCEPTED", accepted), ("REASON", reason)]


def _columns(kind: str, obj: dict[str, Any], wide: bool) -> list[tuple[str, str]]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    cols: list[tuple[str, str]] = []
    if kind == "Service":
        ports = ",".join(f"{p.get('port')}/{p.get('appProtocol') or 'http'}"
                         for p in spec.get("ports") or [])
        cols = [("VIRTUAL-IP", status.get("virtualIP") or "<pending>"), ("PORTS", ports)]
        if wide:
            sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
            cols.append(("SELECTOR", sel or "<none>"))
    elif kind == "Workload":
        ports = ",".join(str(p.get("port")) for p in spec.get("ports") or [])
        cols = [("ADDRESS", spec.get("address") or "-"), ("PORTS", ports or "-"),
                ("PROXY", _proxy_state(status.get("proxy")))]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in sorted(
                ((obj.get("metadata") or {}).get("labels") or {}).items()))
            cols += [("SERVICE-ACCOUNT", spec.get("serviceAccount") or "-"),
                     ("LABELS", labels or "<none>")]
    elif kind in ("HTTPRoute", "GRPCRoute", "TCPRoute"):
        parents = ",".join(str(p.get("name")) for p in spec.get("parentRefs") or [])
        cols = [("PARENTS", parents or "-"), *_accepted(obj)]
    elif "targetRef" in spec:
        t = spec["targetRef"]
        cols = [("TARGET", f"{t.get('kind')}/{t.get('name')}"), *_accepted(obj)]
    elif kind == "Mesh":
        cols = _accepted(obj)
    cols.append(("AGE", _age(obj.get("metadata") or {})))
    return cols


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _emit(data: Any, output: str) -> bool:
    import yaml

    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False))
        return True
    if output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        return True
    return False


@click.command("get")
@click.argument("type_", metavar="TYPE")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. app=web,tier!=db")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "yaml", "json"]),
              default="table")
@server_option
def get_cmd(type_: str, name: str | None, namespace: str | None, all_namespaces: bool,
            selector: str | None, output: str, server: str | None) -> None:
    """List resources of a type, or show one.  `tulle get proxies` lists connected proxies."""
    srv = server_url(server)
    try:
        if type_ in ("proxies", "proxy", "px"):
            _get_proxies(srv, name, None if all_namespaces else namespace, output)
            return
        if name:
            obj = call(srv, "GET", f"/api/v1/resources/{type_}/{name}",
                       query={"namespace": namespace})
            items = [obj]
        else:
            ns = None if all_namespaces else (namespace or "default")
            items = call(srv, "GET", f"/api/v1/resources/{type_}",
                         query={"namespace": ns, "labelSelector": selector})["items"]
    except APIError as exc:
        _fail(exc)
        return
    # One object as it is; several as kubectl prints them: a `kind: List` `apply` reads back.
    if _emit(items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items}, output):
        return
    if not items:
        where = "" if all_namespaces else f" in namespace {namespace or 'default'}"
        click.echo(f"No resources found{where}.", err=True)
        return
    kind = items[0].get("kind", "")
    wide = output == "wide"
    header = ["NAMESPACE", "NAME"] + [c for c, _ in _columns(kind, items[0], wide)]
    rows = [header]
    for obj in items:
        md = obj.get("metadata") or {}
        rows.append([md.get("namespace") or "-", md.get("name") or "?"]
                    + [v for _, v in _columns(kind, obj, wide)])
    _table(rows)


def _get_proxies(srv: str, name: str | None, namespace: str | None, output: str) -> None:
    items = call(srv, "GET", "/api/v1/proxies")["items"]
    if namespace:
        items = [p for p in items if p["namespace"] == namespace]
    if name:
        items = [p for p in items if p["name"] == name]
    if _emit({"items": items}, output):
        return
    rows = [["NAMESPACE", "NAME", "CONNECTED", "ACKED", "DESIRED", "PROTOCOL", "WITHHELD",
             "CERT-EXPIRES", "LAST-NACK"]]
    for p in items:
        nack = p.get("lastNack") or {}
        cert = p.get("certificate") or {}
        rows.append([p["namespace"], p["name"], "yes" if p.get("connected") else "no",
                     p.get("ackedVersion") or "-", p.get("desiredVersion") or "-",
                     str(p.get("protocol") or "-"), _withheld(p) or "-",
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert["notAfter"]))
                     if cert.get("notAfter") else "-",
                     f"{nack.get('version')}: {nack.get('reason')}" if nack else
                     (f"config error: {p['configError']}" if p.get("configError") else "-")])
    _table(rows)


def _withheld(p: dict[str, Any]) -> str:
    """The config features left out of a proxy's snapshots because it lacks them."""
    return ",".join(w["feature"] for w in p.get("withheld") or [])


@click.command("delete")
@click.argument("type_", metavar="TYPE")
@click.argument("names", nargs=-1, required=True)
@click.option("-n", "--namespace", default=None)
@server_option
def delete_cmd(type_: str, names: tuple[str, ...], namespace: str | None,
               server: str | None) -> None:
    """Delete resources by type and name."""
    srv = server_url(server)
    failed = False
    for name in names:
        try:
            obj = call(srv, "DELETE", f"/api/v1/resources/{type_}/{name}",
                       query={"namespace": namespace})
            click.echo(f"{obj['kind'].lower()}/{name} deleted")
        except APIError as exc:
            click.echo(f"error: {exc}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@click.command("describe")
@click.argument("type_", metavar="TYPE")
@click.argument("name")
@click.option("-n", "--namespace", default=None)
@server_option
def describe_cmd(type_: str, name: str, namespace: str | None, server: str | None) -> None:
    """Show a resource with its status conditions (and, for a Workload, its proxy)."""
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
                    click.echo("Withheld:     " + ("; ".join(
                        f"{w['feature']} ({', '.join(w['paths'])})" for w in withheld)
                        or "<none>"))


SECTIONS = {"listeners": "listeners", "routes": "route_tables", "clusters": "clusters",
            "endpoints": "clusters"}


@click.command("proxy-config")
@click.argument("workload")
@click.argument("section", required=False,
                type=click.Choice(["all", "listeners", "routes", "clusters", "endpoints",
                                   "dns"]),
                default="all")
@click.option("-n", "--namespace", default="default")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table")
@server_option
def proxy_config_cmd(workload: str, section: str, namespace: str, output: str,
                     server: str | None) -> None:
    """What a workload's proxy runs: the snapshot it ACKed last (the desired one until it has
    ACKed any), fetched through the control plane."""
    try:
        out = call(server_url(server), "GET", f"/api/v1/proxies/{namespace}/{workload}/config")
    except APIError as exc:
        _fail(exc)
        return
    cfg = out["config"]
    if section == "dns":
        _dns_section(cfg, output)
        return
    data: Any = cfg if section == "all" else cfg.get(SECTIONS[section], [])
    if output != "table" or section == "all":
        _emit(data, "json" if output == "json" else "yaml")
        return
    shown = "running (acked)" if out.get("source") == "acked" else "desired (not acked yet)"
    click.echo(f"# {shown} {cfg.get('version')}; desired {out.get('desiredVersion') or '-'}, "
               f"acked {out.get('ackedVersion') or '-'}")
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
    _table(rows)


def _dns_section(cfg: dict[str, Any], output: str) -> None:
    """`proxy-config WORKLOAD dns`: the resolver's port and upstreams, and each Service's
    names as this proxy answers them (ADR 0042)."""
    from tulle.proxyconfig.dns import names_of  # (the CLI imports the contract lazily)

    d = cfg.get("dns")
    if output != "table":
        _emit(d, "json" if output == "json" else "yaml")
        return
    if not d:
        click.echo("# no mesh DNS resolver (Workload spec.dnsPort not set)")
        return
    ups = ", ".join(d.get("upstreams") or []) or f"from {d.get('resolv_conf')}"
    click.echo(f"# resolver {d['address']}:{d['port']}, ttl {d['ttl_s']}s, upstreams: {ups}")
    local = (cfg.get("node") or {}).get("namespace", "")
    rows = [["NAME", "ADDRESSES"]]
    for h in d.get("hosts") or []:
        for n in names_of(h["service"], h["namespace"], d["domain"], d["mesh_domain"], local):
            rows.append([n, ",".join(h["addresses"])])
    _table(rows)


COMMANDS = [apply_cmd, get_cmd, delete_cmd, describe_cmd, proxy_config_cmd]
