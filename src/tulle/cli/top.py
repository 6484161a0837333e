"""`tulle top KIND/NAME`: the busiest requests right now, like `linkerd viz top` (ADR 0056).

Built on the tap stream, not on the stats reports: the reports group by edge and carry no
paths (ADR 0046), a tap record carries the path.  So `top` is `tap` with a table: records are
grouped by (source, destination, method, path without query) and shown by count, with the
best, worst and last latency and the success rate.  The rate limit of the tap applies (a busy
path shows at most `--max-rps` records per proxy a second): COUNT ranks paths, it is not a
request total (`tulle stat` has those).

The stream is read by a thread and the table redrawn every `--interval` on the main thread, so
a quiet mesh still refreshes.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from tulle.cli.client import APIError, server_url
from tulle.cli.resources import server_option
from tulle.cli.stat import _ms, _table
from tulle.cli.tap import _query, notice, safe, tap_options
from tulle.cli.tap_stream import stream

MAX_ROWS_KEPT = 10_000
"""Distinct (source, destination, method, path) kept; beyond, new ones are not counted."""
COLUMNS = ("SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST",
           "SUCCESS")


@dataclass(slots=True)
class Row:
    source: str
    destination: str
    method: str
    path: str
    count: int = 0
    failures: int = 0
    best: float = float("inf")
    worst: float = 0.0
    last: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "method": self.method,
                "path": self.path, "count": self.count,
                "successRate": round(1 - self.failures / self.count, 6) if self.count else None,
                "latencyMs": {"best": self.best, "worst": self.worst, "last": self.last}}


def failed(r: dict[str, Any]) -> bool:
    """A request that failed: no answer, a 5xx, or a gRPC call that did not end OK (HTTP 200
    with `grpc-status: 14` is a failed call, as `tulle stat` counts it: ADRs 0112, 0119)."""
    status = int(r.get("status") or 0)
    grpc = r.get("grpc_status") or ""
    return status >= 500 or status < 100 or grpc not in ("", "0")


class TopTable:
    """Requests grouped the way `top` shows them."""

    def __init__(self, max_rows: int = MAX_ROWS_KEPT) -> None:
        self.rows: dict[tuple[str, str, str, str], Row] = {}
        self.max_rows = max_rows
        self.records = 0
        self.dropped = 0

    def add(self, r: dict[str, Any]) -> None:
        inbound = r.get("direction") == "inbound"
        source = str(r.get("source") or "-")
        destination = str((r.get("workload") if inbound else r.get("service")) or "-")
        path = str(r.get("path", "")).split("?", 1)[0]
        key = (source, destination, str(r.get("method", "")), path)
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= self.max_rows:
                return
            row = self.rows[key] = Row(*key)
        latency = float(r.get("latency_ms") or 0.0)
        self.records += 1
        row.count += 1
        row.failures += failed(r)
        row.best = min(row.best, latency)
        row.worst = max(row.worst, latency)
        row.last = latency

    def top(self, n: int) -> list[Row]:
        return sorted(self.rows.values(), key=lambda r: (-r.count, r.path, r.source))[:n]

    def render(self, n: int) -> str:
        rows = self.top(n)
        if not rows:
            return "(no requests yet)"
        cells = [[safe(r.source), safe(r.destination), safe(r.method), safe(r.path),
                  str(r.count), _ms(r.best), _ms(r.worst), _ms(r.last),
                  f"{(1 - r.failures / r.count) * 100:.2f}%"] for r in rows]
        out = _table(COLUMNS, cells)
        if self.dropped:
            out += f"\n({self.dropped} more requests matched over the rate limit)"
        return out


def _reader(it: Any, out: queue.Queue[dict[str, Any] | BaseException | None]) -> None:
    try:
        for item in it:
            out.put(item)
    except BaseException as exc:  # handed to the main thread
        out.put(exc)
    out.put(None)


@click.command("top")
@click.argument("target", metavar="KIND/NAME")
@tap_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes.")
@click.option("--count", default=0, type=click.IntRange(min=0),
              help="Stop after this many refreshes (0: until Ctrl-C).")
@click.option("--rows", default=20, show_default=True, type=click.IntRange(min=1))
@server_option
def top_cmd(target: str, namespace: str, path: str, method: str, status: str, authority: str,
            direction: str, rate: float, duration: float, output: str, interval: float,
            count: int, rows: int, server: str | None) -> None:
    """The busiest requests of a workload (deploy/NAME) or a Service (svc/NAME) right now,
    from a live tap: count, best / worst / last latency and success rate per source,
    destination, method and path.

    For a Service the servers' view (inbound) is shown unless --direction says otherwise.
    Exit status 1 when the control plane refuses the tap or cannot be reached.
    """
    if not direction and target.split("/", 1)[0].lower() in ("svc", "service", "services"):
        direction = "inbound"  # each request once, as its server saw it
    query = _query(target, namespace, path, method, status, authority, direction, rate,
                   duration)
    try:
        it = stream(server_url(server), query)
        first = next(it, None)
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if first is not None and output == "table":
        text = notice(first)
        if text:
            click.echo(text, err=True)
    table = TopTable()
    items: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue(10_000)
    threading.Thread(target=_reader, args=(it, items), daemon=True).start()
    shown = 0
    ended = False
    next_at = time.monotonic() + interval
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            while not ended:
                try:
                    item = items.get(timeout=max(0.0, next_at - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    ended = True
                elif isinstance(item, BaseException):
                    click.echo(f"error: the tap stream failed: {item}", err=True)
                    sys.exit(1)
                elif item.get("type") == "request":
                    table.add(item)
                elif item.get("type") == "dropped":
                    table.dropped += int(item.get("count") or 0)
            if ended:
                time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + interval
            if output == "json":
                click.echo(json.dumps({"items": [r.to_dict() for r in table.top(rows)],
                                       "records": table.records, "dropped": table.dropped},
                                      separators=(",", ":")))
            else:
                if shown and sys.stdout.isatty():
                    click.clear()
                click.echo(table.render(rows) + ("" if sys.stdout.isatty() else "\n"))
            shown += 1
            if (count and shown >= count) or ended:
                return


__all__ = ["TopTable", "top_cmd"]
