"""What `tulle demo` prints: the live line from a stat document, the mTLS table from metrics."""

from __future__ import annotations

from tulle.demo import report
from tulle.demo.mesh import pods


def row(name: str, **kw: object) -> dict[str, object]:
    return {"kind": "Service", "namespace": "shop", "name": name, **kw}


def test_the_live_line_shows_rate_success_split_retries_and_grpc() -> None:
    services = {"items": [
        row("web", rps=20.0, successRate=0.995, latencyMs={"p99": 12.5}),
        row("catalog-v1", requests=180), row("catalog-v2", requests=20),
        row("flaky", successRate=1.0), row("inventory", rps=19.9)]}
    workloads = {"items": [row("flaky-0", successRate=0.7)]}
    line = report.live_line(12, services, workloads)
    assert "web   20.0 rps" in line and "success  99.5%" in line and "p99   12.5 ms" in line
    assert "v1  90% / v2  10%" in line
    assert "flaky served  70.0%, after retries 100.0%" in line
    assert "inventory (gRPC)  19.9 rps" in line


def test_the_live_line_before_any_traffic() -> None:
    line = report.live_line(0, {"items": []}, {"items": []})
    assert "v1   - / v2   -" in line and "success    -  " in line


METRICS = """\
# TYPE tulle_proxy_protocol_detected_total counter
tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:8080|mtls"} 7
tulle_proxy_protocol_detected_total{listener="inbound",protocol="chain:plaintext"} 2
tulle_proxy_protocol_detected_total{listener="outbound",protocol="chain:mtls"} 99
tulle_proxy_protocol_detected_total{listener="shop/flaky-0|inbound",protocol="chain:8080|mtls"} 5
tulle_proxy_protocol_detected_total{listener="shop/catalog-v2-0|inbound",protocol="chain:8080|mtls"} 3
"""


def test_chains_count_only_the_pods_own_inbound_listener() -> None:
    assert report.chains(METRICS, "web-0", agent=False) == {"mtls": 7, "plaintext": 2}
    assert report.chains(METRICS, "flaky-0", agent=True) == {"mtls": 5, "plaintext": 0}
    assert report.chains(METRICS, "catalog-v2-0", agent=True) == {"mtls": 3, "plaintext": 0}


def test_the_banner_names_every_pod_and_the_commands() -> None:
    text = report.banner(pods(20), {"load-0": "tl-1-7"}, "http://127.0.0.1:15681",
                         "10.231.0.10:15680", "/tmp/x", "/run/tulle/admin-token",
                         default_port=True)
    for p in pods(20):
        assert p.name in text and p.address in text
    assert "tulle get proxies" in text and "--server" not in text
    assert "spiffe://demo.tulle.local/ns/shop/sa/web" in text
    assert "ip netns exec tl-1-7 curl -s http://web.shop.svc.cluster.local/" in text
    other = report.banner(pods(20), {}, "http://127.0.0.1:9", "x", "y", "z",
                          default_port=False)
    assert "export TULLE_SERVER=http://127.0.0.1:9" in other
