"""`tulle stat`: traffic per Service, workload and edge, like `linkerd viz stat` (ADR 0046).

A thin client of `GET /api/v1/stat`: the control plane aggregates what the proxies report over
a sliding window; this module only asks and renders (a kubectl-style table, `-o wide` with
more columns and the edges, `-o json` the API's document unchanged).  `--watch` asks again
every `--interval` until Ctrl-C, or `--count` times (for scripts and tests).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from tulle.cli.client import APIError, call, server_url
from tulle.cli.resources import server_option
from tulle.cli.tap import safe

COLUMNS = ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
           "TCP_CONN")
WIDE = ("REQUESTS", "FAILURES", "LATENCY_MEAN")
EDGE_COLUMNS = ("FROM", "TO", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
                "TCP_CONN")


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}ms" if v < 10 else f"{v:.0f}ms"


def _cells(s: dict[str, Any]) -> list[str]:
    rate = s.get("successRate")
    lat = s.get("latencyMs") or {}
    return ["-" if rate is None else f"{rate * 100:.2f}%", f"{s.get('rps', 0):.1f}rps",
            _ms(lat.get("p50")), _ms(lat.get("p95")), _ms(lat.get("p99")),
            str(s.get("tcpConnections", 0))]


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    # Every cell terminal-safe: names come from what proxies report (the control plane
    # refuses a name that is no Service's, ADR 0099; this is the second line).
    rows = [[safe(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [list(header), *rows]]
    return "\n".join(lines)


def _who(ref: dict[str, str], all_ns: bool) -> str:
    return f"{ref['namespace']}/{ref['name']}" if all_ns else ref["name"]


def render(doc: dict[str, Any], *, wide: bool, all_namespaces: bool,
           edges: bool) -> str:
    """The table(s) of one `/api/v1/stat` document."""
    items = doc.get("items") or []
    if not items:
        kind = doc.get("resourceKind", "Service")
        return (f"No traffic reported for any {kind} in the last {doc.get('window')} "
                f"(proxies report every few seconds; is traffic flowing through meshed "
                f"proxies?)")
    header = (("NAMESPACE",) if all_namespaces else ()) + COLUMNS + (WIDE if wide else ())
    rows = []
    for it in items:
        row = ([it["namespace"]] if all_namespaces else []) + [it["name"], str(it["meshed"])]
        row += _cells(it)
        if wide:
            row += [str(it["requests"]), str(it["failures"]),
                    _ms((it.get("latencyMs") or {}).get("mean"))]
        rows.append(row)
    out = _table(header, rows)
    edge_items = doc.get("edges") or []
    if (edges or wide) and edge_items:
        cross = all_namespaces or len({e[k]["namespace"] for e in edge_items
                                       for k in ("from", "to")}) > 1
        erows = [[_who(e["from"], cross), _who(e["to"], cross), *_cells(e)]
                 for e in edge_items]
        out += "\n\n" + _table(EDGE_COLUMNS, erows)
    return out


def _split_target(target: str) -> tuple[str, str | None]:
    kind, _, name = target.partition("/")
    return kind, (name or None)


@click.command("stat")
@click.argument("target", required=False, default="services", metavar="[KIND[/NAME]]")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table",
              show_default=True, help="wide: more columns and the edges; json: the API's "
                                      "document (docs/reference/stat.md).")
@click.option("--window", default="30s", show_default=True,
              help="The sliding window the figures cover (e.g. 10s, 1m; at most 10m).")
@click.option("-w", "--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --watch: seconds between refreshes.")
@click.option("--count", default=0, type=click.IntRange(min=0),
              help="With --watch: stop after this many refreshes (0: until Ctrl-C).")
@server_option
def stat_cmd(target: str, namespace: str, all_namespaces: bool, output: str, window: str,
             watch: bool, interval: float, count: int, server: str | None) -> None:
    """Requests per second, success rate, latency percentiles and open TCP connections per
    Service (as its clients see it), per workload (as its sidecar serves it) and per edge.

    KIND is `svc`/`services` (default) or `workload`/`wl`; KIND/NAME shows one and its edges.
    Exit status 1 when the control plane cannot answer or refuses the query.
    """
    kind, name = _split_target(target)
    url = server_url(server)
    query = {"kind": kind, "name": name, "window": window,
             "namespace": None if all_namespaces else namespace}
    shown = 0
    try:
        while True:
            try:
                doc = call(url, "GET", "/api/v1/stat", query=query)
            except APIError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(1)
            if output == "json":
                text = json.dumps(doc, indent=2)
            else:
                text = render(doc, wide=output == "wide", all_namespaces=all_namespaces,
                              edges=name is not None)
            if watch and shown and sys.stdout.isatty():
                click.clear()
            click.echo(text)
            shown += 1
            if not watch or (count and shown >= count):
                return
            if output != "json" and not sys.stdout.isatty():
                click.echo("")
            time.sleep(interval)
    except KeyboardInterrupt:
        return


__all__ = ["render", "stat_cmd"]
