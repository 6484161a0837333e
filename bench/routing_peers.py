"""The routing row (issue 8): Tulle and HAProxy choosing among ten rules, with header edits.

Both peers get the same table, written once here (`RULES`) and rendered for each:

- ten rules, every one with a path regular expression (`^/[0-9]+k$`), one header condition on
  `x-tenant` and one query condition on `tier` (Exact or RegularExpression, matched whole);
- the benchmark request (`ROUTED_PATH` with `ROUTED_HEADERS`) matches only the last rule: the
  first three fail on the header, the next three on a header pattern, the next three pass the
  header and fail on the query, so both the header and the query conditions are evaluated;
- the last rule goes to the origin with the two header filters of `tulle-filters` (request:
  set `x-env`, remove `x-debug`; response: set `x-served-by`, remove `server`); the other nine
  go to a `wrong` backend.

Tulle runs it as route-table rules (`RouteMatch` with `RegularExpression` path, header and
query matches; equal precedence, so declaration order decides, as in HAProxy); HAProxy as
`acl` lines (`path_reg`, `req.hdr() -m str|reg`, `urlp() -m str|reg`) and `use_backend ... if`
in the same order, the edits as `http-request set-header/del-header` and `http-response
set-header/del-header` in the origin backend, which only the last rule uses.

The bytes are checked before anything is measured: each peer is first started against two
echo servers (`right`, `wrong`) that report what they received, and must send the benchmark
request to `right` with the request edits made and answer it with the response edits, send a
request matching a middle rule to `wrong`, and refuse one matching nothing.  Only then is the
measured instance started (the same config; `wrong` is a closed port there, so a misrouted
request is a non-2xx in the results).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.peers import (
    BODY_PATH,
    HEADER_FILTERS,
    PROXY_CPU,
    Running,
    Skip,
    tulle_cmd,
)
from bench.procs import ProcessSet, free_port, http_get_full, tree, wait_port

ROUTED_PATH = BODY_PATH + "?tier=gold"
ROUTED_HEADERS = ("x-tenant: acme-42", "x-debug: 1")
"""The benchmark request: it matches only the last of `RULES`."""

PATH_RE = "/[0-9]+k"
Cond = tuple[str, str]
"""(type, value): `Exact` or `RegularExpression`."""
RULES: list[tuple[Cond, Cond]] = [
    *[(("Exact", f"other-{i}"), ("Exact", "gold")) for i in range(3)],
    *[(("RegularExpression", f"team{i}-[a-z]+"), ("RegularExpression", "gold|silver"))
      for i in range(3, 6)],
    *[(("RegularExpression", "acme-[0-9]+"), ("Exact", f"bronze{i}")) for i in range(6, 9)],
    (("RegularExpression", "acme-[0-9]+"), ("RegularExpression", "gold|platinum")),
]
"""(x-tenant header condition, tier query condition) of each rule, in order; the last is the
routed one."""
MIDDLE_REQUEST = (BODY_PATH + "?tier=bronze7", ("x-tenant: acme-7",))
"""Matches rule 7 only: it must reach `wrong`."""


def tulle_routing_config(port: int, admin_port: int, origin_port: int,
                         wrong_port: int) -> dict[str, object]:
    rules: list[dict[str, object]] = []
    for i, ((htype, hvalue), (qtype, qvalue)) in enumerate(RULES):
        last = i == len(RULES) - 1
        rule: dict[str, object] = {
            "name": f"r{i}",
            "matches": [{"path": {"type": "RegularExpression", "value": PATH_RE},
                         "headers": [{"type": htype, "name": "x-tenant", "value": hvalue}],
                         "query_params": [{"type": qtype, "name": "tier", "value": qvalue}]}],
            "backends": [{"cluster": "origin" if last else "wrong"}]}
        if last:
            rule["filters"] = HEADER_FILTERS
        rules.append(rule)
    cluster = {"protocol": "http1", "max_idle_per_endpoint": 1024}
    return {
        "version": "bench",
        "node": {"name": "bench"},
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "settings": {"workers": 1},
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port,
                       "protocol": "http1", "route_table": "rt"}],
        "clusters": [
            {"name": "origin", **cluster,
             "endpoints": [{"address": "127.0.0.1", "port": origin_port}]},
            {"name": "wrong", **cluster,
             "endpoints": [{"address": "127.0.0.1", "port": wrong_port}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": rules}]}],
    }


def _ha_cond(fetch: str, cond: Cond) -> str:
    kind, value = cond
    return f"{fetch} -m str {value}" if kind == "Exact" else f"{fetch} -m reg ^({value})$"


def haproxy_routing_config(tmp: Path, port: int, stats_port: int, origin_port: int,
                           wrong_port: int) -> str:
    acls = [f"  acl path_ok path_reg ^{PATH_RE}$"]
    uses = []
    for i, (header, query) in enumerate(RULES):
        acls.append(f"  acl h{i} {_ha_cond('req.hdr(x-tenant)', header)}")
        acls.append(f"  acl q{i} {_ha_cond('urlp(tier)', query)}")
        backend = "origin" if i == len(RULES) - 1 else "wrong"
        uses.append(f"  use_backend {backend} if path_ok h{i} q{i}")
    acl_text = "\n".join(acls)
    use_text = "\n".join(uses)
    return f"""# HAProxy routing peer for the Tulle benchmark: ten ACL rules, header edits.
global
  nbthread 1
  maxconn 4000
  pidfile {tmp}/haproxy-routes.pid

defaults
  mode http
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s

frontend bench
  bind 127.0.0.1:{port}
{acl_text}
{use_text}

backend origin
  http-reuse always
  http-request set-header x-env prod
  http-request del-header x-debug
  http-response set-header x-served-by tulle
  http-response del-header server
  server o1 127.0.0.1:{origin_port}

backend wrong
  http-reuse always
  server w1 127.0.0.1:{wrong_port}

frontend stats
  bind 127.0.0.1:{stats_port}
  stats enable
  stats uri /stats
"""


# -- the bytes, checked first -----------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers with its server's name and the request's headers, as JSON."""

    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        body = json.dumps({"name": getattr(self.server, "echo_name", ""),
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _echo(name: str) -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.echo_name = name  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def _ask(port: int, path: str, headers: tuple[str, ...]) -> tuple[int, bytes, dict[str, Any]]:
    status, head, body = http_get_full(port, path, headers=headers)
    try:
        seen = json.loads(body) if status == 200 else {}
    except ValueError:
        seen = {}
    return status, head, seen


def check_routing(name: str, port: int) -> None:
    """The peer on `port` (in front of the `right` and `wrong` echo servers) must route and
    edit as `RULES` say, or it is not measured."""
    status, head, seen = _ask(port, ROUTED_PATH, ROUTED_HEADERS)
    got = seen.get("headers", {})
    lines = head.lower().split(b"\r\n")
    problems = []
    if status != 200 or seen.get("name") != "right":
        problems.append(f"the routed request reached {seen.get('name') or status}, not right")
    if got.get("x-env") != "prod" or "x-debug" in got:
        problems.append(f"request edits not made (the origin saw {got})")
    if b"x-served-by: tulle" not in lines or any(x.startswith(b"server:") for x in lines):
        problems.append(f"response edits not made: {head!r}")
    status, _, seen = _ask(port, *MIDDLE_REQUEST)
    if status != 200 or seen.get("name") != "wrong":
        problems.append(f"a request for rule 7 reached {seen.get('name') or status}, not wrong")
    status, _, seen = _ask(port, ROUTED_PATH, ())
    if status < 400:
        problems.append(f"a request matching no rule was answered {status} by {seen.get('name')}")
    if problems:
        raise RuntimeError(f"{name}: " + "; ".join(problems))


Starter = Callable[[ProcessSet, int, int, str], Running]
"""(process set, origin port, wrong port, tag) -> the peer, started and listening."""


def _checked_then_started(ps: ProcessSet, name: str, origin_port: int, protocol: str,
                          start: Starter) -> Running:
    if protocol != "http1":
        raise Skip("the routing row is measured on HTTP/1.1 only")
    with _echo("right") as right, _echo("wrong") as wrong:
        probe = start(ps, right, wrong, "check")
        try:
            check_routing(name, probe.port)
        finally:
            if probe.proc is not None:
                ps.stop(probe.proc)
    r = start(ps, origin_port, free_port(), "bench")
    r.path, r.headers = ROUTED_PATH, ROUTED_HEADERS
    return r


def _tulle(ps: ProcessSet, origin_port: int, wrong_port: int, tag: str) -> Running:
    port, admin = free_port(), free_port()
    conf = ps.tmp / f"tulle-routes-{tag}.json"
    conf.write_text(json.dumps(tulle_routing_config(port, admin, origin_port, wrong_port),
                               indent=2))
    proc = ps.start(f"tulle-routes-{tag}", [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                                           "--watch-interval", "0", "--log-level", "warning"],
                    cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("tulle-routes", port, proc, tree(proc.pid))


def _haproxy(ps: ProcessSet, origin_port: int, wrong_port: int, tag: str) -> Running:
    port, stats = free_port(), free_port()
    conf = ps.tmp / f"haproxy-routes-{tag}.cfg"
    conf.write_text(haproxy_routing_config(ps.tmp, port, stats, origin_port, wrong_port))
    proc = ps.start(f"haproxy-routes-{tag}", ["haproxy", "-db", "-f", str(conf)], cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("haproxy-routes", port, proc, tree(proc.pid))


def start_tulle_routes(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """Tulle with the ten-rule table; HTTP/1.1 rounds only."""
    return _checked_then_started(ps, "tulle-routes", origin_port, protocol, _tulle)


def start_haproxy_routes(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """HAProxy with the same ten rules as ACLs; HTTP/1.1 rounds only."""
    return _checked_then_started(ps, "haproxy-routes", origin_port, protocol, _haproxy)


ROUTING_STARTERS = {"tulle-routes": start_tulle_routes, "haproxy-routes": start_haproxy_routes}
