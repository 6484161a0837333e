"""The resilience row (issue 10): Tulle and HAProxy with the same resilience settings.

"CPU per request with peak-EWMA, retries and a circuit breaker configured and metrics on,
against HAProxy with equivalent settings in the same run (target ≤ 2x HAProxy)".  Both peers
get the same job, written once here:

- **two endpoints**: the run's origin and a second nginx serving the same 1 KiB file (started
  once per run, on the load CPU, shared by both peers), so the balancer has a choice to make;
- **balancing**: Tulle `peak_ewma` (latency-aware, its default); HAProxy `balance leastconn`
  (its nearest: fewest connections, no latency term);
- **retries**: 2 retries on 5xx and connect failures — Tulle `retry` on the route (with its
  default retry budget, 20% + 10/s); HAProxy `retries 2`, `retry-on conn-failure
  empty-response 500 502 503 504`, `option redispatch` (another server for the retry);
- **circuit breaker**: Tulle `limits` 1024 connections / 1024 pending / 1024 requests / 3
  retries (the defaults, written out); HAProxy `maxconn 512` per server (1,024 in all) with
  `timeout queue 1s` (the pending queue) and `fullconn 1024`;
- **metrics on**: Tulle's admin `/metrics` (always kept); HAProxy's stats page.

Nothing fails during the measurement: the row prices the machinery on a healthy path.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.peers import (
    BODY_PATH,
    BODY_SIZE,
    LOAD_CPU,
    PROXY_CPU,
    RETRY,
    Running,
    Skip,
    origin_config,
    tulle_cmd,
)
from bench.procs import ProcessSet, free_port, http_get, tree, wait_port

LIMITS = {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024,
          "max_retries": 3}
_second: dict[int, int] = {}
"""The second origin's port, per ProcessSet (one per run)."""


def second_origin(ps: ProcessSet) -> int:
    """Start (once per run) a second nginx serving the origin's file; its port."""
    if id(ps) in _second:
        return _second[id(ps)]
    port = free_port()
    conf = ps.tmp / "origin2.conf"
    conf.write_text(origin_config(ps.tmp, port).replace("origin.pid", "origin2.pid")
                    .replace("origin-error.log", "origin2-error.log"))
    proc = ps.start("origin2", ["nginx", "-p", str(ps.tmp), "-c", str(conf)], cpu=LOAD_CPU)
    wait_port(port, proc)
    status, body = http_get(port, BODY_PATH)
    if status != 200 or len(body) != BODY_SIZE:
        raise RuntimeError(f"second origin answered {status} with {len(body)} bytes")
    _second[id(ps)] = port
    return port


def tulle_resilience_config(port: int, admin_port: int, origins: list[int]) -> dict[str, object]:
    return {
        "version": "bench",
        "node": {"name": "bench"},
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "settings": {"workers": 1},
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port,
                       "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "origin", "protocol": "http1", "max_idle_per_endpoint": 1024,
                      "lb_policy": "peak_ewma", "limits": LIMITS,
                      "endpoints": [{"address": "127.0.0.1", "port": p} for p in origins]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"],
             "rules": [{"backends": [{"cluster": "origin"}], "retry": RETRY}]}]}],
    }


def haproxy_resilience_config(tmp: Path, port: int, stats_port: int, origins: list[int]) -> str:
    servers = "\n".join(f"  server o{i} 127.0.0.1:{p} maxconn 512"
                        for i, p in enumerate(origins, 1))
    return f"""# HAProxy resilience peer for the Tulle benchmark: leastconn, L7 retries, maxconn/queue.
global
  nbthread 1
  maxconn 4000
  pidfile {tmp}/haproxy-resilience.pid

defaults
  mode http
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  timeout queue 1s

frontend bench
  bind 127.0.0.1:{port}
  default_backend origin

backend origin
  http-reuse always
  balance leastconn
  fullconn 1024
  retries 2
  retry-on conn-failure empty-response 500 502 503 504
  option redispatch
{servers}

frontend stats
  bind 127.0.0.1:{stats_port}
  stats enable
  stats uri /stats
"""


def start_tulle_resilience(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """Tulle with peak-EWMA, retries and limits over two origins; HTTP/1.1 rounds only."""
    if protocol != "http1":
        raise Skip("the resilience row is measured on HTTP/1.1 only")
    origins = [origin_port, second_origin(ps)]
    port, admin = free_port(), free_port()
    conf = ps.tmp / "tulle-resilience.json"
    conf.write_text(json.dumps(tulle_resilience_config(port, admin, origins), indent=2))
    proc = ps.start("tulle-resilience", [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                                         "--watch-interval", "0", "--log-level", "warning"],
                    cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("tulle-resilience", port, proc, tree(proc.pid))


def start_haproxy_resilience(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """HAProxy with leastconn, retries and maxconn/queue over the same two origins."""
    if protocol != "http1":
        raise Skip("the resilience row is measured on HTTP/1.1 only")
    origins = [origin_port, second_origin(ps)]
    port, stats = free_port(), free_port()
    conf = ps.tmp / "haproxy-resilience.cfg"
    conf.write_text(haproxy_resilience_config(ps.tmp, port, stats, origins))
    proc = ps.start("haproxy-resilience", ["haproxy", "-db", "-f", str(conf)], cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("haproxy-resilience", port, proc, tree(proc.pid))


RESILIENCE_STARTERS = {"tulle-resilience": start_tulle_resilience,
                       "haproxy-resilience": start_haproxy_resilience}
