"""`telemetry.tracing` is refused with a field path when it cannot work."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig.validate import ConfigError, validate


def _cfg(**tracing: Any) -> dict[str, Any]:
    return {"telemetry": {"tracing": tracing}}


def test_a_valid_section_is_taken() -> None:
    cfg = validate(_cfg(sampling_percent=0.5, propagation=["b3", "w3c"],
                        otlp_endpoint="http://127.0.0.1:4318", service_name="web"))
    assert cfg.telemetry.tracing is not None
    assert cfg.telemetry.tracing.propagation == ["b3", "w3c"]
    assert validate({}).telemetry.tracing is None


@pytest.mark.parametrize(("tracing", "path"), [
    ({"sampling_percent": 101}, "telemetry.tracing.sampling_percent"),
    ({"sampling_percent": -1}, "telemetry.tracing.sampling_percent"),
    ({"propagation": ["jaeger"]}, "telemetry.tracing.propagation[0]"),
    ({"propagation": []}, "telemetry.tracing.propagation"),
    ({"propagation": ["w3c", "w3c"]}, "telemetry.tracing.propagation"),
    ({"otlp_endpoint": "grpc://collector:4317"}, "telemetry.tracing.otlp_endpoint"),
    ({"otlp_endpoint": "http://u:secret@collector:4318"}, "telemetry.tracing.otlp_endpoint"),
    ({"otlp_endpoint": "http://collector:99999"}, "telemetry.tracing.otlp_endpoint"),
    ({"otlp_endpoint": "http:///v1"}, "telemetry.tracing.otlp_endpoint"),
    ({"otlp_endpoint": "http://c:4318/?q=1"}, "telemetry.tracing.otlp_endpoint"),
    ({"sampling": 1}, "telemetry.tracing.sampling"),
    ({"sampling_percent": "1"}, "telemetry.tracing.sampling_percent"),
    ({"sampling_percent": float("nan")}, "telemetry.tracing.sampling_percent"),
])
def test_bad_values_are_refused_with_their_path(tracing: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(_cfg(**tracing))
    assert path in str(err.value)
    assert "secret" not in str(err.value)
