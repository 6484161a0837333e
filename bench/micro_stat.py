"""What `tulle stat`'s reports cost (ADR 0046): proxy CPU per report, bytes on the wire, and
the control plane's memory per proxy for a full retention window.

    .venv/bin/python -m bench.micro_stat [--clusters 50] [--reports 200]

No sockets.  The proxy side builds a `ProxyMetrics` with the series a busy sidecar has
(`--clusters` outbound Services, each with 200/404/503 and a flagged 503, one inbound
listener), adds traffic to every series between reports, and times `Summarizer.report` plus
encoding the `StatsReport` frame (the whole per-interval cost; the request path pays nothing).
The control-plane side fills a `StatsWindow` for 100 proxies with a full 600 s retention of
such reports at the default 5 s interval and measures the bytes held (tracemalloc), and times
one `stat_document` over all of it.  Results are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import msgspec

from tulle.controlplane.telemetry.stat import stat_document
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.dataplane.listeners.request_stats import RequestStats
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.summary import Summarizer
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import StatsReport, encode


def _config(clusters: int) -> ProxyConfig:
    return msgspec.convert({
        "version": "1", "node": {"name": "web-0", "namespace": "shop", "service": "web"},
        "listeners": [
            {"name": "outbound", "address": "127.0.0.1", "port": 15001,
             "direction": "outbound", "route_table": "outbound"},
            {"name": "inbound|8080", "address": "127.0.0.1", "port": 18080,
             "direction": "inbound", "cluster": "inbound|8080"}],
        "clusters": [{"name": "inbound|8080"}] + [
            {"name": f"outbound|80||svc{i}.shop",
             "metadata": {"service": f"svc{i}", "namespace": "shop"}}
            for i in range(clusters)],
    }, ProxyConfig)


def proxy_side(clusters: int, reports: int) -> dict[str, float]:
    cfg = _config(clusters)
    m = ProxyMetrics()
    stats = [RequestStats(m, "outbound", f"outbound|80||svc{i}.shop") for i in range(clusters)]
    stats.append(RequestStats(m, "inbound|8080", "inbound|8080"))
    for i in range(clusters):
        m.upstream_connections_active.labels(f"outbound|80||svc{i}.shop").value = 2
    s = Summarizer(m)
    s.report(cfg)
    times: list[float] = []
    sizes: list[int] = []
    for n in range(reports):
        for j, st in enumerate(stats):  # traffic on every series between two reports
            st.count(200, "", 3.0 + j % 7)
            st.count(404, "", 1.0)
            st.count(503, "", 0.4)
            st.count(503, "UH", 0.1)
        t0 = time.process_time_ns()
        frame = encode(StatsReport(interval_ms=5000, rows=s.report(cfg)))
        times.append((time.process_time_ns() - t0) / 1000)
        sizes.append(len(frame))
        del n
    med = statistics.median(times)
    return {"series": clusters + 1, "report_us_median": round(med, 1),
            "report_us_p90": round(sorted(times)[int(0.9 * len(times))], 1),
            "frame_bytes": statistics.median(sizes),
            "cpu_share_at_5s_percent": round(med / 5_000_000 * 100, 5)}


def control_plane_side(clusters: int, proxies: int = 100) -> dict[str, float]:
    cfg = _config(clusters)
    m = ProxyMetrics()
    stats = [RequestStats(m, "outbound", f"outbound|80||svc{i}.shop") for i in range(clusters)]
    s = Summarizer(m)
    s.report(cfg)
    one: list[StatsReport] = []
    for _ in range(3):
        for st in stats:
            st.count(200, "", 3.0)
            st.count(503, "", 9.0)
        one.append(StatsReport(interval_ms=5000, rows=s.report(cfg)))
    reports = [msgspec.json.decode(msgspec.json.encode(r), type=StatsReport) for r in one]
    now = [0.0]
    win = StatsWindow(clock=lambda: now[0])
    per_proxy_reports = int(win.retention / 5)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for k in range(per_proxy_reports):
        now[0] = k * 5.0
        for p in range(proxies):
            # decoded afresh, as from the wire: nothing shared between proxies or reports
            r = msgspec.json.decode(msgspec.json.encode(reports[k % 3]), type=StatsReport)
            rows = [msgspec.structs.replace(row, workload=f"shop/web-{p}") for row in r.rows]
            win.ingest(f"shop/web-{p}", StatsReport(interval_ms=5000, rows=rows),
                       {f"shop/web-{p}"})
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    t0 = time.process_time()
    doc = stat_document(win, 30, "Service")
    query_ms = (time.process_time() - t0) * 1000
    assert doc["items"]
    return {"proxies": proxies, "rows_per_report": clusters,
            "reports_per_proxy": per_proxy_reports,
            "kib_per_proxy_full_retention": round(held / proxies / 1024, 1),
            "stat_query_ms_30s_window": round(query_ms, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--reports", type=int, default=200)
    a = ap.parse_args()
    print(json.dumps({"proxy": proxy_side(a.clusters, a.reports),
                      "control_plane": control_plane_side(a.clusters)}, indent=2))


if __name__ == "__main__":
    main()
