"""`tulle tap KIND/NAME`: live requests as the proxies see them, like `linkerd viz tap`.

A thin client of `GET /api/v1/tap` (ADR 0056): the control plane asks the proxies that see the
traffic, each filters and rate-limits at the source, and the records stream back here.  One
line per request (`-o json`: the record as the API sends it, one object per line).  Text from
the proxies is printed with control characters escaped, so a request path cannot drive the
terminal.  Ctrl-C (or `--count`, `--duration`) ends the watch, which ends the tap at the
proxies.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import click

from tulle.cli.client import APIError, server_url
from tulle.cli.resources import server_option
from tulle.cli.tap_stream import stream, tap_query

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
"""C0 and C1 controls (U+009B is CSI: `\\u009b2J` clears a terminal as `ESC [ 2J` does) and
bidi overrides / invisible characters: the set `controlplane/push/reported.py` escapes in
what proxies report (ADR 0045, 0060; a test keeps the two in step).  A Host header carries
any of them past the HTTP/1 parser into a tap record."""


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(value: Any) -> str:
    """`value` as text with control and bidi characters escaped (terminal-safe)."""
    return _UNSAFE.sub(_escape, str(value))


def line(r: dict[str, Any]) -> str:
    """One request record as a line."""
    ts = time.strftime("%H:%M:%S", time.localtime(r.get("ts_ms", 0) / 1000))
    ms = f".{int(r.get('ts_ms', 0)) % 1000:03d}"
    status = r.get("status") or "-"
    if r.get("grpc_status"):  # a gRPC call: its own status says how it ended (HTTP 200 or not)
        status = f"{status} grpc-status={safe(r['grpc_status'])}"
    flags = f" flags={safe(r['flags'])}" if r.get("flags") else ""
    out = (f"{ts}{ms} {safe(r.get('direction', '')):8} {safe(r.get('proxy', ''))} "
           f"{safe(r.get('method', ''))} {safe(r.get('authority', ''))}"
           f"{safe(r.get('path', ''))} -> {status} {r.get('latency_ms', 0):.1f}ms"
           f"{flags} src={safe(r.get('source', '-'))} dst={safe(r.get('destination', '-'))}"
           f" tls={'true' if r.get('mtls') else 'false'}")
    for name, value in r.get("headers") or ():
        out += f"\n    {safe(name)}: {safe(value)}"
    return out


def notice(item: dict[str, Any]) -> str | None:
    t = item.get("type")
    if t == "started":
        proxies = item.get("proxies") or []
        untapped = item.get("untapped") or []
        out = (f"# tapping {len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'}: "
               f"{safe(', '.join(proxies)) or ('none' if untapped else 'none connected yet')}")
        if untapped:  # an older build without `tap` (ADR 0122): its requests are not shown
            out += (f"\n# not tapped, their build has no tap (requests they see are not "
                    f"shown): {safe(', '.join(untapped))}")
        return out
    if t == "dropped":
        return f"# {safe(item.get('proxy'))}: {item.get('count')} requests not shown (over the rate)"
    if t == "ended":
        return f"# {safe(item.get('proxy'))}: tap ended: {safe(item.get('reason'))}"
    if t == "proxy-gone":
        return f"# {safe(item.get('proxy'))}: disconnected"
    return None


def tap_options(f: Any) -> Any:
    for opt in reversed([
        click.option("-n", "--namespace", default="default", show_default=True),
        click.option("--path", default="", help="Only requests whose path starts with this."),
        click.option("--method", default="", help="Only this method (GET, POST, ...)."),
        click.option("--status", default="", help="Only this status: 503, 5xx or 500-504."),
        click.option("--authority", default="", help="Only this :authority / Host."),
        click.option("--direction", type=click.Choice(["", "inbound", "outbound"]),
                     default="", help="Only requests into (inbound) or out of (outbound) "
                                      "the sidecars."),
        click.option("--max-rps", "rate", default=10.0, show_default=True,
                     type=click.FloatRange(min=0.1, max=100.0),
                     help="Records per second per proxy at most (the proxy drops the rest "
                          "and says how many)."),
        click.option("--duration", default=0.0, type=click.FloatRange(min=0.0),
                     help="Stop after this many seconds (0: until Ctrl-C)."),
    ]):
        f = opt(f)
    return f


def _query(target: str, namespace: str, path: str, method: str, status: str, authority: str,
           direction: str, rate: float, duration: float, headers: bool = False) -> dict[str, Any]:
    try:
        return tap_query(target, namespace, path=path, method=method, status=status,
                         authority=authority, direction=direction, rate=rate,
                         duration=duration or None, headers=headers)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("tap")
@click.argument("target", metavar="KIND/NAME")
@tap_options
@click.option("--headers", is_flag=True,
              help="Show request headers (admin tokens only; credentials always redacted).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--count", default=0, type=click.IntRange(min=0),
              help="Stop after this many requests (0: until Ctrl-C).")
@server_option
def tap_cmd(target: str, namespace: str, path: str, method: str, status: str, authority: str,
            direction: str, rate: float, duration: float, headers: bool, output: str,
            count: int, server: str | None) -> None:
    """Stream live requests of a workload (deploy/NAME, workload/NAME) or a Service
    (svc/NAME) as its sidecars see them: both directions of a workload; for a Service, its
    callers' outbound and its servers' inbound view of each request.

    Exit status 1 when the control plane refuses the tap or cannot be reached.
    """
    query = _query(target, namespace, path, method, status, authority, direction, rate,
                   duration, headers)
    seen = 0
    try:
        for item in stream(server_url(server), query):
            if item.get("type") == "request":
                seen += 1
                click.echo(json.dumps(item, separators=(",", ":")) if output == "json"
                           else line(item))
                if count and seen >= count:
                    return
            elif output == "text":
                text = notice(item)
                if text:
                    click.echo(text, err=True)
            sys.stdout.flush()
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        return


__all__ = ["line", "safe", "tap_cmd", "tap_options"]
