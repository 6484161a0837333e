"""The text form of an explain document: one block per step, each decision with its reason.

Reads only the JSON document (`tulle.cli.explain.explain`), so the text and `-o json` cannot
say different things.
"""

from __future__ import annotations

import json
from typing import Any


def _filters(fs: list[dict[str, Any]]) -> list[str]:
    out = []
    for f in fs:
        cfg = {k: v for k, v in f.items() if k not in ("type", "from")}
        out.append(f"      {f['type']} ({f['from']}): {json.dumps(cfg, sort_keys=True)}")
    return out


def _sent(c: dict[str, Any]) -> str:
    parts = [f"{k} {c[k]}" for k in ("path", "authority") if k in c]
    if c.get("headersSet"):
        parts.append(f"headers set {', '.join(c['headersSet'])}")
    if c.get("headersRemoved"):
        parts.append(f"headers removed {', '.join(c['headersRemoved'])}")
    return "; ".join(parts)


def _route(r: dict[str, Any], indent: str, label: str = "") -> list[str]:
    lines: list[str] = []
    if "virtualHost" in r:
        lines.append(f"{indent}{label}virtual host {r['virtualHost']} (route table "
                     f"{r['routeTable']})")
    for s in r.get("notTaken") or []:
        lines.append(f"{indent}  x {s['route']} match {s['matchIndex']}: {s['why']}")
    if r.get("result") == "matched":
        t = r["taken"]
        lines.append(f"{indent}  > {r['route']} (rule {r['ruleIndex']}, match "
                     f"{t['matchIndex']}: {' and '.join(t['conditions'])})")
        lines.append(f"{indent}    {r['why']}")
    elif "why" in r:
        lines.append(f"{indent}  ! {r['why']}")
    return lines


def _hop(ep: dict[str, Any]) -> list[str]:
    lines = [f"    endpoint {ep['endpoint']} -> workload {ep.get('workload') or '?'}"]
    note = (ep.get("destinationConfig") or {}).get("note")
    if note:
        lines.append(f"      note: {note}")
    c = ep.get("client") or {}
    lines.append(f"      caller dials {c.get('mode')}: {c.get('why')}")
    if c.get("expectedIdentities"):
        lines.append(f"        expects server identity: {', '.join(c['expectedIdentities'])}")
    if ep.get("serverIdentity") and c.get("mode") != "plaintext":
        lines.append(f"        server identity: {ep['serverIdentity']}")
    s = ep.get("server")
    if s:
        lines.append(f"      inbound listener {s['listener']} accepts {s['accepts']}")
        lines.append(f"        chain {s['chain'] or '-'}: {s['why']}"
                     + (f"; ALPN {s['alpn']}" if s.get("alpn") else ""))
    if "mtls" in ep:
        lines.append(f"      hop: {ep['mtls']}" + (f", peer identity {ep['peerIdentity']}"
                                                   if ep.get("peerIdentity") else
                                                   ", no peer identity"))
    if ep.get("inboundRoute"):
        lines += _route(ep["inboundRoute"], "      ", "inbound ")
    a = ep.get("authorization")
    if a:
        rule = f" rule {a['rule']}" if a.get("rule") is not None else ""
        verdict = "ALLOW" if a["allowed"] else "DENY"
        lines.append(f"      authorization: {verdict} by {a['policy']}{rule}"
                     + (f" ({a['action']})" if a.get("action") else ""))
        lines.append(f"        why: {a['why']}")
        for p in a.get("policies") or []:
            lines.append(f"        policy {p['name']}: {p['action']}, {p['rules']} rule(s)"
                         + (", dry run" if p.get("dryRun") else ""))
        for e in a.get("events") or []:
            lines.append(f"        also: {e['result']} by {e['policy']} ({e['action']})")
        if a.get("body") and "grpcStatus" in a:
            lines.append(f"        response: HTTP 200, grpc-status {a['grpcStatus']} "
                         f"({a['grpcCode']}): {a['body'].strip()}")
        elif a.get("body"):
            lines.append(f"        response: 403 {a['body'].strip()}")
    f = ep.get("fault")
    if f:
        lines.append(f"      fault{' ' + f['policy'] if f.get('policy') else ''}: {f['why']}")
    shown = not s or ep.get("result") in ("aborted", "timed_out")
    lines.append(f"      result: {ep.get('result')}" + (f" ({ep['why']})" if ep.get("why")
                                                        and shown else ""))
    return lines


def render(doc: dict[str, Any]) -> str:
    r = doc["request"]
    src = doc["source"]
    lines = [f"{r['method']} {r['path']} to {r['authority']} from {r['from']}"
             + (f" with headers {', '.join(r['headers'])}" if r["headers"] else ""),
             f"  caller's snapshot {src['configVersion']} ({src['configSource']})", ""]
    out = doc["outbound"]
    lines.append(f"outbound ({out['listener']}): path {out['path'] or '-'} ({out['pathWhy']})")
    if out.get("originalDestination"):
        lines.append(f"  {out['originalDestination']['why']}")
    lines += _route(out, "  ")
    if out.get("result") == "matched":
        t = out["timeouts"]
        lines.append(f"  timeouts: request {t['requestMs']} ms (from {t['requestFrom']}), "
                     f"per try {str(t['perTryMs']) + ' ms' if t['perTryMs'] else 'none'}")
        if out.get("retry"):
            rt = out["retry"]
            on = ", ".join(rt["on"])
            codes = ("any 5xx" if rt["any5xx"] else
                     ", ".join(map(str, rt["statusCodes"])) or "no status")
            grpc = (f"; gRPC statuses: {', '.join(map(str, rt['grpcStatuses']))}"
                    if rt["grpcStatuses"] else "")
            lines.append(f"  retries: {rt['why']}; on {on} (statuses: {codes}{grpc}); backoff "
                         f"{rt['backoffMs'][0]}-{rt['backoffMs'][1]} ms")
        if out["filters"]:
            lines.append("  filters, in run order:")
            lines += _filters(out["filters"])
        if out.get("note"):
            lines.append(f"  note: {out['note']}")
        if out.get("localReply"):
            lines.append(f"  no backend: {out['localReply']}")
        else:
            lines.append("  backends: " + ", ".join(f"{b['cluster']} weight {b['weight']} "
                                                    f"({b['percent']}%)"
                                                    for b in out["backends"]))
    for h in doc.get("hops") or []:
        lines.append("")
        lines.append(f"backend {h['cluster']} (weight {h['weight']})"
                     + (f": {h['why']}" if "why" in h else ""))
        if h.get("filters"):
            lines.append("  filters for this backend, in run order:")
            lines += _filters(h["filters"])
        if h.get("request"):
            lines.append(f"  the caller's proxy sends: {_sent(h['request'])}")
        for ep in h.get("endpoints") or []:
            lines += _hop(ep)
        if h.get("endpointsNotShown"):
            lines.append(f"    ... {h['endpointsNotShown']} more endpoint(s) not traced")
    o = doc["outcome"]
    lines += ["", f"outcome: {o['summary']}"]
    return "\n".join(lines)
