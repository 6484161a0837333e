"""The contract's `outlier_detection` and `health_check`: impossible values refused with the
field's path (types by msgspec, the rest by `validate`)."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig.validate import ConfigError, validate


def cfg(protocol: str = "http1", **cluster: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "l", "port": 1, "cluster": "c"}],
            "clusters": [{"name": "c", "protocol": protocol, **cluster,
                          "endpoints": [{"address": "127.0.0.1", "port": 2}]}]}


@pytest.mark.parametrize(("raw", "path", "message"), [
    (cfg(outlier_detection={"interval_ms": 0}), "clusters[0].outlier_detection.interval_ms", ""),
    (cfg(outlier_detection={"max_ejection_percent": 101}),
     "clusters[0].outlier_detection.max_ejection_percent", ""),
    (cfg(outlier_detection={"base_ejection_time_ms": 5000, "max_ejection_time_ms": 1000}),
     "clusters[0].outlier_detection.max_ejection_time_ms", "not be less than"),
    (cfg("tcp", outlier_detection={}), "clusters[0].outlier_detection", "not enforced on a tcp"),
    (cfg(health_check={"type": "grpc"}), "clusters[0].health_check.type", "needs an http2"),
    (cfg("tcp", health_check={"type": "http"}), "clusters[0].health_check.type", "not tcp"),
    (cfg(health_check={"type": "http", "timeout_ms": 10, "interval_ms": 5}),
     "clusters[0].health_check.timeout_ms", "must not exceed interval_ms"),
    (cfg(health_check={"type": "http", "path": "no-slash"}), "clusters[0].health_check.path", ""),
    (cfg(health_check={"type": "http", "expected_statuses": [99]}),
     "clusters[0].health_check.expected_statuses[0]", ""),
    (cfg(health_check={"type": "udp"}), "clusters[0].health_check.type", ""),
])
def test_bad_values_are_refused_with_their_path(raw: dict[str, Any], path: str,
                                                message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    assert any(e.path == path and message in e.message for e in info.value.errors), \
        info.value.errors


def test_good_values_pass() -> None:
    c = validate(cfg("http2", outlier_detection={}, health_check={"type": "grpc"})).clusters[0]
    assert c.outlier_detection is not None and c.outlier_detection.consecutive_5xx == 5
    assert c.health_check is not None and c.health_check.grpc_service == ""
    assert validate(cfg("tcp", health_check={"type": "tcp"})).clusters[0].health_check
