"""`Mesh.spec.observability.accessLog` / `.flowLog` -> every proxy's `telemetry.access_log` /
`telemetry.flow_log` (ADR 0054), and what `tulle apply` refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tulle.api.errors import from_pydantic
from tulle.api.mesh import Mesh
from tulle.controlplane.compiler import MeshInputs, compile_mesh
from tulle.proxyconfig.logs import AccessLogTelemetry, FlowLogTelemetry, LogFilter, LogSink
from tulle.proxyconfig.logs import check as log_checks


def workload(name: str, port: int) -> dict[str, Any]:
    return {"kind": "Workload", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"address": "127.0.0.1",
                     "ports": [{"name": "http", "port": port, "targetPort": port + 1000}]}}


def mesh(observability: dict[str, Any]) -> dict[str, Any]:
    doc = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
           "metadata": {"name": "default"}, "spec": {"observability": observability}}
    Mesh.model_validate(doc)  # what `tulle apply` accepts
    return doc


BASE = [workload("web-1", 18001), workload("api-1", 18002)]


def test_off_unless_set() -> None:
    snap = compile_mesh(MeshInputs.from_resources(BASE)).snapshots[("ns", "web-1")]
    assert snap.telemetry.access_log is None and snap.telemetry.flow_log is None
    assert snap.telemetry.principal == ""  # (nothing names it: versions stay as they were)


def test_every_proxy_gets_the_mesh_settings_and_a_new_version() -> None:
    before = compile_mesh(MeshInputs.from_resources(BASE)).snapshots
    obs = {"accessLog": {"format": "text", "textFormat": "%REQ(:METHOD)% %RESPONSE_CODE%",
                         "sink": {"type": "otlp", "endpoint": "http://otel:4318",
                                  "flushInterval": "250ms", "queueSize": 500},
                         "samplePercent": 12.5,
                         "filter": {"statusMin": 400, "durationMin": "1s500ms",
                                    "errorsOnly": True}},
           "flowLog": {"sink": {"type": "file", "path": "/var/log/tulle/flows.log"},
                       "interval": "5m"}}
    after = compile_mesh(MeshInputs.from_resources([*BASE, mesh(obs)])).snapshots
    for key in (("ns", "web-1"), ("ns", "api-1")):
        t = after[key].telemetry
        assert t.access_log == AccessLogTelemetry(
            format="text", text_format="%REQ(:METHOD)% %RESPONSE_CODE%",
            sink=LogSink(kind="otlp", endpoint="http://otel:4318", flush_interval_ms=250,
                         queue_size=500),
            sample_percent=12.5,
            filter=LogFilter(status_min=400, duration_min_ms=1500, errors_only=True))
        assert t.flow_log == FlowLogTelemetry(
            sink=LogSink(kind="file", path="/var/log/tulle/flows.log"), interval_ms=300_000)
        assert after[key].version != before[key].version
        assert t.principal == "spiffe://cluster.local/ns/ns/sa/default"
        # What the compiler emits a proxy takes (the contract's own checks of the section).
        assert log_checks(t.access_log, t.flow_log) == []


@pytest.mark.parametrize(("obs", "where"), [
    ({"accessLog": {"sink": {"type": "file"}}}, "accessLog.sink.path"),
    ({"accessLog": {"sink": {"type": "file", "path": "rel.log"}}}, "accessLog.sink.path"),
    ({"accessLog": {"sink": {"type": "otlp"}}}, "accessLog.sink.endpoint"),
    ({"accessLog": {"sink": {"type": "otlp", "endpoint": "ftp://x"}}}, "accessLog.sink.endpoint"),
    ({"accessLog": {"sink": {"endpoint": "http://x:1"}}}, "accessLog.sink.endpoint"),
    ({"accessLog": {"sink": {"flushInterval": "5ms"}}}, "accessLog.sink.flushInterval"),
    ({"accessLog": {"format": "text", "textFormat": "%BOGUS%"}}, "accessLog.textFormat"),
    ({"accessLog": {"samplePercent": 101}}, "accessLog.samplePercent"),
    ({"accessLog": {"filter": {"durationMin": "25h"}}}, "accessLog.filter.durationMin"),
    ({"flowLog": {"interval": "48h"}}, "flowLog.interval"),
    ({"flowLog": {"format": "text", "textFormat": "%METHOD%"}}, "flowLog.textFormat"),
    ({"flowLog": {"nope": 1}}, "flowLog.nope"),
])
def test_refused_on_apply_with_the_field(obs: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as e:
        mesh(obs)
    paths = [err.path for err in from_pydantic(e.value)]
    assert f"spec.observability.{where}" in paths, paths
