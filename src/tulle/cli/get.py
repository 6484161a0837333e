"""`tulle get`: list resources of one or several kinds (`svc,httproute`), or show one;
`--watch` prints changes as they happen; `tulle get proxies` lists the connected proxies.

Tables follow kubectl: NAMESPACE and NAME first, the kind's own columns, AGE last; several
kinds print one table each under a `KIND` heading, and `-o yaml|json` one `kind: List` that
`tulle apply -f -` reads back.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.listing import CHUNK_SIZE, list_all, read_pages
from tulle.cli.output import emit, table
from tulle.cli.proxy_state import STARTING_PREFIX, draining, starting
from tulle.cli.resources import _fail, server_option


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
    `connected`, or why and since when its endpoints are out (`draining`: still on its
    stream, shutting down, ADR 0092; `starting`: on its stream, no config applied yet, ADR
    0116)."""
    if not isinstance(proxy, dict):
        return "-"
    if proxy.get("state") == "Connected":
        return "connected"
    age = _age({"creationTimestamp": proxy.get("since")})
    ago = f" {age} ago" if age != "-" else ""
    reason = str(proxy.get("reason") or "?")
    if draining(proxy):
        return f"draining{ago}, out of endpoints: {reason.partition(': ')[2]}"
    if starting(proxy):
        return f"starting{ago}, out of endpoints: {reason.removeprefix(STARTING_PREFIX)}"
    return f"disconnected{ago}, out of endpoints: {reason}"


def _connected(p: dict[str, Any]) -> str:
    """`get proxies`' CONNECTED: on a stream, and whether it is an endpoint through it
    (`starting`: no config applied yet, or its first one NACKed, ADR 0116; a control plane
    from before `serving` says nothing: as `yes`)."""
    if not p.get("connected"):
        return "no"
    if p.get("draining"):
        return "yes, draining"
    return "yes" if p.get("serving", True) else "yes, starting"


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
        vips = status.get("virtualIP") or "<pending>"
        from tulle.api.service import DUAL_STACK

        if spec.get("ipFamilyPolicy") in DUAL_STACK:
            vips += "," + (status.get("virtualIPv6") or "<pending>")  # ADR 0088
        cols = [("VIRTUAL-IP", vips), ("PORTS", ports)]
        if wide:
            sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
            cols.append(("SELECTOR", sel or "<none>"))
    elif kind == "Workload":
        ports = ",".join(str(p.get("port")) for p in spec.get("ports") or [])
        address = ",".join([spec.get("address") or "-", *(spec.get("additionalAddresses") or [])])
        cols = [("ADDRESS", address), ("PORTS", ports or "-"),
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




def _rows(items: list[dict[str, Any]], wide: bool) -> list[list[str]]:
    kind = items[0].get("kind", "")
    header = ["NAMESPACE", "NAME"] + [c for c, _ in _columns(kind, items[0], wide)]
    rows = [header]
    for obj in items:
        md = obj.get("metadata") or {}
        rows.append([md.get("namespace") or "-", md.get("name") or "?"]
                    + [v for _, v in _columns(kind, obj, wide)])
    return rows


@click.command("get")
@click.argument("type_", metavar="TYPE[,TYPE...]")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. app=web,tier!=db")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "yaml", "json"]),
              default="table")
@click.option("-w", "--watch", is_flag=True,
              help="After the list, print each object again when it changes (and `DELETED` "
                   "when it goes), as it happens, until Ctrl-C: the API's watch from the "
                   "list's revision, so no change is missed; listed again after a dropped "
                   "connection.")
@click.option("--all", "show_all", is_flag=True,
              help="`get proxies`: also the disconnected ones.")
@click.option("--chunk-size", type=click.IntRange(0, 10_000), default=CHUNK_SIZE,
              show_default=True,
              help="Read a list in pages of this many objects (0: in one answer).")
@server_option
def get_cmd(type_: str, name: str | None, namespace: str | None, all_namespaces: bool,
            selector: str | None, output: str, watch: bool, show_all: bool, chunk_size: int,
            server: str | None) -> None:
    """List resources of one or several kinds (`svc,httproute`), or show one.
    `tulle get proxies` lists the connected proxies (`--all`: disconnected ones too)."""
    srv = server_url(server)
    types = [t for t in type_.split(",") if t]
    if not types:
        raise click.UsageError("TYPE: give a kind, e.g. `svc` or `svc,httproute`")
    if name and len(types) > 1:
        raise click.UsageError("NAME: one kind only when a name is given")
    ns = None if all_namespaces else (namespace or "default")
    try:
        if types == ["proxies"] or types[0] in ("proxies", "proxy", "px"):
            _get_proxies(srv, name, None if all_namespaces else namespace, output, show_all,
                         chunk_size)
            return
        if name:
            obj = call(srv, "GET", f"/api/v1/resources/{types[0]}/{name}",
                       query={"namespace": namespace})
            if not emit(obj, output):
                table(_rows([obj], output == "wide"))
            if watch:
                _watch(srv, {types[0]: (None, [obj])}, namespace or "default", None, output,
                       only=name)
            return
        listed = {t: list_all(srv, t, ns, selector, chunk_size) for t in types}
        lists = [(t, items) for t, (items, _) in listed.items()]
    except APIError as exc:
        _fail(exc)
        return
    everything = [o for _, items in lists for o in items]
    # Several as kubectl prints them: a `kind: List` `apply` reads back.
    if not emit({"apiVersion": "v1", "kind": "List", "items": everything}, output):
        if not everything:
            where = "" if all_namespaces else f" in namespace {ns}"
            click.echo(f"No resources found{where}.", err=True)
        shown = 0
        for _t, items in lists:
            if not items:
                continue
            if len(types) > 1:
                click.echo(("\n" if shown else "") + f"{items[0].get('kind', '')}:")
            table(_rows(items, output == "wide"))
            shown += 1
    if watch:
        _watch(srv, {t: (rv, items) for t, (items, rv) in listed.items()}, ns, selector,
               output)


def _watch(srv: str, shown: dict[str, tuple[str | None, list[dict[str, Any]]]],
           ns: str | None, selector: str | None, output: str, only: str | None = None
           ) -> None:
    """Follow each kind (`shown`: type -> the revision its list reflected, None to list it
    first, and the objects printed) and print every change as it comes, one line (or
    document) per change, until Ctrl-C."""
    import queue

    from tulle.cli.watch import Change, Follower, key_of, rv_of

    out: queue.Queue[Change] = queue.Queue()
    for type_, (revision, items) in shown.items():
        # Each follower keeps its own record of what it showed: nothing is shared between
        # the threads but the queue.
        Follower(srv, type_, ns, selector, only, {key_of(o): rv_of(o) for o in items}, revision,
                 out).start()
    try:
        while True:
            try:
                change = out.get(timeout=0.5)
            except queue.Empty:
                continue
            if change.what == "object" and change.object is not None:
                _print_change(change.object, output)
            elif change.what == "deleted" and change.key is not None:
                k = change.key
                click.echo(f"DELETED   {k[0].lower()}/{k[2]}" + (f" -n {k[1]}" if k[1] else ""))
            else:
                click.echo(change.message, err=True)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


def _print_change(obj: dict[str, Any], output: str) -> None:
    if emit(obj, output):
        return
    row = _rows([obj], output == "wide")[1]
    click.echo("   ".join(row))


def _get_proxies(srv: str, name: str | None, namespace: str | None, output: str,
                 show_all: bool, chunk_size: int = CHUNK_SIZE) -> None:
    items, _ = read_pages(srv, "/api/v1/proxies", {"namespace": namespace or None},
                          chunk_size)
    if namespace:  # (a control plane from before the `namespace` parameter lists them all)
        items = [p for p in items if p["namespace"] == namespace]
    if name:
        items = [p for p in items if p["name"] == name]
    hidden = 0
    if not show_all and not name:
        hidden = sum(1 for p in items if not p.get("connected"))
        items = [p for p in items if p.get("connected")]
    if emit({"items": items}, output):
        return
    wide = output == "wide"
    rows = [["NAMESPACE", "NAME", "CONNECTED", "ACKED", "DESIRED", "PROTOCOL", "WITHHELD",
             "CERT-EXPIRES", "LAST-NACK"]
            + (["PEER", "SINCE", "CONTROL-PLANE", "PUSHES", "FEATURES"] if wide else [])]
    for p in items:
        cert = p.get("certificate") or {}
        rows.append([p["namespace"], p["name"],
                     _connected(p),
                     p.get("ackedVersion") or "-", p.get("desiredVersion") or "-",
                     str(p.get("protocol") or "-"), _withheld(p) or "-",
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert["notAfter"]))
                     if cert.get("notAfter") else "-", _nack(p)]
                    + ([p.get("peer") or "-",
                        _age({"creationTimestamp": time.strftime(
                            "%Y-%m-%dT%H:%M:%S", time.gmtime(p["connectedSince"]))})
                        if p.get("connectedSince") else "-",
                        p.get("controlPlane") or "-", str(p.get("pushes", 0)),
                        str(len(p.get("features") or []))] if wide else []))
    if len(rows) > 1:
        table(rows)
    else:
        click.echo("No proxies connected.", err=True)
    if hidden:
        click.echo(f"({hidden} disconnected prox{'y' if hidden == 1 else 'ies'} not shown: "
                   f"--all shows them)", err=True)
    if any(p.get("withheldInUse") for p in items):
        click.echo("(WITHHELD *: its config uses it, so that part is not in force at that "
                   "proxy: `tulle check` lists them)", err=True)


def _nack(p: dict[str, Any]) -> str:
    """The last NACK while it still stands: a proxy that has ACKed its desired version since
    has moved past it (it is history, shown by `describe workload`)."""
    if p.get("configError"):
        return f"config error: {p['configError']}"
    nack = p.get("lastNack") or {}
    if not nack or (p.get("desiredVersion") and p.get("ackedVersion") == p["desiredVersion"]):
        return "-"
    return f"{nack.get('version')}: {nack.get('reason')}"


def _withheld(p: dict[str, Any]) -> str:
    """The config features left out of a proxy's snapshots because it lacks them; those its
    config uses (not in force there, ADR 0122) first, marked `*`."""
    used = set(p.get("withheldInUse") or ())
    names = [w["feature"] for w in p.get("withheld") or []]
    return ",".join([f"{n}*" for n in names if n in used] + [n for n in names if n not in used])
