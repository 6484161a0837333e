"""Attack review A2 (ADR 0060): label values an upstream chooses, through a real proxy.

`grpc_response_status` was the upstream's `grpc-status` bytes as they came: a peer could make
each series' label kilobytes long (the family's series bound holds the number of series, not
their size: this test's 49 answers, 40 of them with a 4 KB status, made 8.9 MB of exposition
before the fix, 146 KB after; at the default bound of 2,000 series that is ~450 MB per
scrape), and any text at all where dashboards expect gRPC's codes 0-16.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from tests.integration.dataplane.test_golden_metrics import _admin
from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import running_proxy, simple_config

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


async def test_an_upstreams_grpc_status_cannot_grow_or_forge_the_exposition() -> None:
    async with running_h2_origin() as (port, origin):
        hostile = ['0", evil="1', "5\\", "14 ", "017", "-1", "99999999999", "\u00e9"]
        origin.script = [f"grpc-{v}" for v in hostile] + [
            f"grpc-{i}{'x' * 4000}" for i in range(40)] + ["grpc-5", "grpc-14"]
        cfg = simple_config(port, protocol="http2", cluster_protocol="http2")
        cfg["telemetry"] = {"metrics": {}}
        async with running_proxy(cfg, admin=True) as p:
            c = await H2Client.connect(p.port())
            try:
                for _ in range(len(origin.script)):
                    resp = await c.request("POST", "/script", GRPC, body=b"\x00" * 5)
                    assert resp.status == 200
                ok = await c.request("POST", "/script", GRPC, body=b"\x00" * 5)
                assert ok.trailers == [(b"grpc-status", b"0")]  # still serving
            finally:
                c.close()
            head, body = await _admin(p.admin_port, None)
            assert head.startswith(b"HTTP/1.1 200")
            text = body.decode()
            values = set()
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    v = sample.labels.get("grpc_response_status")
                    if v is not None:
                        values.add(v)
            assert values <= {str(i) for i in range(17)}, sorted(values)[:5]
            assert {"0", "2", "5", "14"} <= values
            assert len(text) < 400_000, len(text)
