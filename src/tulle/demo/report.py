"""What `tulle demo` prints: the banner (what runs, what to try) and the live summaries.

The live line comes from the control plane's `tulle stat` document (ADR 0046: the proxies'
own reports over the stream), so it shows what the mesh saw, not what the load generator
believes; the closing mTLS table comes from each server's proxy /metrics (which inbound filter
chain took the connections: `mtls` or `plaintext`).
"""

from __future__ import annotations

import re
from typing import Any

from tulle.demo.mesh import NAMESPACE, Pod

_CHAIN = re.compile(r'^tulle_proxy_protocol_detected_total\{listener="([^"]*)",'
                    r'protocol="chain:(?:[^"|]*\|)?(mtls|plaintext)"\} (\d+)', re.M)


def banner(pods: list[Pod], netns: dict[str, str], api: str, cp_stream: str, state: str,
           token_file: str, default_port: bool) -> str:
    """`netns`: each pod's network namespace name (for `ip netns exec`)."""
    rows = "\n".join(
        f"  {p.name:13s} {p.address:11s} {p.node:7s} "
        f"{'agent (shared)' if p.agent_ports else 'sidecar':15s} {netns.get(p.name, '?'):12s} "
        f"spiffe://demo.tulle.local/ns/{NAMESPACE}/sa/{p.service_account}"
        for p in pods)
    load = netns.get("load-0", "?")
    t = "tulle"
    how = ("no flags or variables needed" if default_port
           else f"after `export TULLE_SERVER={api}`: --api-port is not the default")
    return f"""
Tulle demo — a meshed shop in network namespaces (nothing routed to or from this host)
  control plane  API {api} (host loopback), proxy stream {cp_stream} (inside the testbed),
                 store {state}/tulle.db, admin token {token_file}
  pod            address     node    proxy           netns        identity
{rows}
  load-0 ─▶ web ─▶ catalog (HTTPRoute catalog-canary: 90% catalog-v1 / 10% catalog-v2)
               ├─▶ inventory (gRPC)    └─▶ flaky (30% 503s, RetryPolicy flaky-retries)
  every hop: the pod's own socket ─▶ iptables ─▶ its proxy ═mTLS (STRICT)═▶ the server's proxy
  AuthorizationPolicy catalog-callers: only web's identity may call the catalog

Try, in another shell as root ({how}):
  {t} get proxies                          # who is connected, which version they ACKed
  {t} get workloads -n {NAMESPACE} -o wide
  {t} stat svc -n {NAMESPACE} --watch            # rps, success, p50/p95/p99 per Service
  {t} stat workload/web-0 -n {NAMESPACE} -o wide # web's edges: catalog-v1/v2, inventory, flaky
  {t} proxy-config web-0 -n {NAMESPACE} routes   # the canary as web's sidecar runs it
  {t} proxy-config web-0 -n {NAMESPACE} dns      # the names web's sidecar answers
  {t} explain --from web-0 -n {NAMESPACE} --to catalog --path /items/1   # route, mTLS, authz
  {t} describe retrypolicy flaky-retries -n {NAMESPACE}
  ip netns exec {load} curl -s http://web.{NAMESPACE}.svc.cluster.local/      # from inside a pod
  ip netns exec {load} curl -s http://catalog.{NAMESPACE}.svc.cluster.local/items/1  # 403: not web
  move the canary to 50/50 and watch the split follow within seconds:
  {t} get httproute catalog-canary -n {NAMESPACE} -o yaml \
      | sed 's/weight: 90/weight: 50/; s/weight: 10/weight: 50/' | {t} apply -f -
Logs: {state}  (removed at exit)
"""


def _item(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for row in doc.get("items") or []:
        if row.get("name") == name:
            return dict(row)
    return {}


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def live_line(elapsed: float, services: dict[str, Any], workloads: dict[str, Any]) -> str:
    """One line: web's rate, success and p99 as its clients saw them; the catalog split;
    what flaky's own proxy served against what its callers got after retries; inventory's
    gRPC rate."""
    web = _item(services, "web")
    served = _item(workloads, "flaky-0").get("successRate")
    v1 = _item(services, "catalog-v1").get("requests", 0)
    v2 = _item(services, "catalog-v2").get("requests", 0)
    flaky = _item(services, "flaky")
    inv = _item(services, "inventory")
    p99 = (web.get("latencyMs") or {}).get("p99")
    split = (f"v1 {100 * v1 / (v1 + v2):3.0f}% / v2 {100 * v2 / (v1 + v2):3.0f}%"
             if v1 + v2 else "v1   - / v2   -")
    return (f"  t={elapsed:5.0f}s  web {web.get('rps', 0.0):6.1f} rps  success "
            f"{_pct(web.get('successRate'))}  p99 "
            f"{'  -  ' if p99 is None else f'{p99:6.1f}'} ms | catalog {split} | flaky "
            f"served {_pct(served)}, after retries {_pct(flaky.get('successRate'))} | "
            "inventory (gRPC) "
            f"{inv.get('rps', 0.0):5.1f} rps")


def chains(metrics: str, pod: str, agent: bool) -> dict[str, int]:
    """`pod`'s inbound connections per filter-chain kind (`mtls`, `plaintext`) in its proxy's
    /metrics: a sidecar's listener is `inbound`, a node agent's (several pods, ADR 0032's
    renaming) `<namespace>/<pod>|inbound`."""
    out = {"mtls": 0, "plaintext": 0}
    mine = f"{NAMESPACE}/{pod}|inbound" if agent else "inbound"
    for listener, kind, n in _CHAIN.findall(metrics):
        if listener == mine:
            out[kind] += int(n)
    return out


def mtls_table(per_pod: dict[str, dict[str, int]]) -> str:
    lines = ["mTLS, as the servers' proxies took their inbound connections:"]
    lines += [f"  {name:13s} mtls={c['mtls']:<6d} plaintext={c['plaintext']}"
              for name, c in per_pod.items()]
    return "\n".join(lines)
