"""`telemetry.access_log` / `telemetry.flow_log`: bad values refused with their field paths."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig.validate import ConfigError, validate


def _errors(telemetry: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        validate({"telemetry": telemetry})
    return [str(x) for x in e.value.errors]


def test_defaults_are_valid() -> None:
    cfg = validate({"telemetry": {"access_log": {}, "flow_log": {}}})
    assert cfg.telemetry.access_log is not None and cfg.telemetry.access_log.format == "json"
    assert cfg.telemetry.flow_log is not None and cfg.telemetry.flow_log.interval_ms == 60000


@pytest.mark.parametrize(("telemetry", "where"), [
    ({"access_log": {"sink": {"kind": "file"}}}, "telemetry.access_log.sink.path"),
    ({"access_log": {"sink": {"kind": "file", "path": "relative.log"}}},
     "telemetry.access_log.sink.path"),
    ({"access_log": {"sink": {"kind": "stdout", "path": "/x"}}}, "telemetry.access_log.sink.path"),
    ({"flow_log": {"sink": {"kind": "otlp"}}}, "telemetry.flow_log.sink.endpoint"),
    ({"flow_log": {"sink": {"kind": "otlp", "endpoint": "ftp://c:1"}}},
     "telemetry.flow_log.sink.endpoint"),
    ({"flow_log": {"sink": {"kind": "otlp", "endpoint": "http://c:1/x\r\nHost: y"}}},
     "telemetry.flow_log.sink.endpoint"),
    ({"access_log": {"sink": {"endpoint": "http://c:4318"}}}, "telemetry.access_log.sink.endpoint"),
    ({"access_log": {"format": "text", "text_format": "%NOPE%"}},
     "telemetry.access_log.text_format"),
    ({"access_log": {"format": "text", "text_format": "%REQ%"}},
     "telemetry.access_log.text_format"),
    ({"flow_log": {"format": "text", "text_format": "%METHOD%"}},  # an access command
     "telemetry.flow_log.text_format"),
    ({"access_log": {"sample_percent": 100.5}}, "telemetry.access_log.sample_percent"),
    ({"access_log": {"sample_percent": "half"}}, "telemetry.access_log.sample_percent"),
    ({"access_log": {"sample_percent": True}}, "telemetry.access_log.sample_percent"),
    ({"access_log": {"filter": {"status_min": 600}}}, "telemetry.access_log.filter.status_min"),
    ({"access_log": {"sink": {"queue_size": 0}}}, "telemetry.access_log.sink.queue_size"),
    ({"flow_log": {"interval_ms": -1}}, "telemetry.flow_log.interval_ms"),
    ({"access_log": {"format": "xml"}}, "telemetry.access_log.format"),
    ({"access_log": {"bogus": 1}}, "telemetry.access_log.bogus"),
])
def test_refused_with_the_path(telemetry: dict[str, Any], where: str) -> None:
    assert any(e.startswith(where + ":") for e in _errors(telemetry)), _errors(telemetry)


def test_a_text_format_of_known_commands_is_taken() -> None:
    cfg = validate({"telemetry": {"access_log": {
        "format": "text", "text_format": "%START_TIME% %REQ(X-A?X-B):10% %RESPONSE_FLAGS_LONG%"},
        "flow_log": {"format": "text", "text_format": "%PACKETS_SENT% %VERDICT%"}}})
    assert cfg.telemetry.access_log is not None
