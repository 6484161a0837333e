"""FaultInjection, RateLimit and the `rate_limit` network filter configs: bad values are
refused with their field paths, as the proxy validates a snapshot."""

from __future__ import annotations

from typing import Any

from tulle.proxyconfig.validate import ConfigError, validate

P = "route_tables[0].virtual_hosts[0].rules[0].filters[0]"


def errors(f: dict[str, Any]) -> list[str]:
    raw = {"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1}]}],
           "listeners": [{"name": "in", "port": 0, "protocol": "http1", "route_table": "rt"}],
           "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "v", "rules": [
               {"backends": [{"cluster": "c"}], "filters": [f]}]}]}]}
    return _errors(raw)


def _errors(raw: dict[str, Any]) -> list[str]:
    try:
        validate(raw)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def net_errors(f: dict[str, Any]) -> list[str]:
    raw = {"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1}]}],
           "listeners": [{"name": "t", "port": 0, "protocol": "tcp", "cluster": "c",
                          "network_filters": [f]}]}
    return _errors(raw)


def test_a_valid_fault_and_limit_pass() -> None:
    assert errors({"type": "FaultInjection", "abort": {"http_status": 503, "percent": 12},
                   "delay": {"fixed_delay_ms": 5}}) == []
    assert errors({"type": "RateLimit", "local": {"requests": 10, "interval_ms": 1000,
                                                  "by": "header", "header": "x-tenant"},
                   "global": {"requests": 100, "interval_ms": 1000, "redis": "[::1]:6379",
                              "key": "ns/svc"}}) == []


def test_fault_bad_values_name_their_paths() -> None:
    assert errors({"type": "FaultInjection"}) == [
        f"{P}: a FaultInjection filter needs `delay`, `abort` or both"]
    assert errors({"type": "FaultInjection", "abort": {"percent": 10}}) == [
        f"{P}.abort: needs `http_status`, `grpc_status` or both"]
    (e,) = errors({"type": "FaultInjection", "abort": {"http_status": 503, "percent": 101}})
    assert e.startswith(f"{P}.abort.percent:")
    (e,) = errors({"type": "FaultInjection", "delay": {"fixed_delay_ms": -1}})
    assert e.startswith(f"{P}.delay.fixed_delay_ms:")
    (e,) = errors({"type": "FaultInjection", "abort": {"grpc_status": 0}})
    assert e.startswith(f"{P}.abort.grpc_status:")
    (e,) = errors({"type": "FaultInjection", "abort": {"http_status": 503},
                   "headers": [{"name": "bad name", "value": "x"}]})
    assert e.startswith(f"{P}.headers[0].name:")


def test_rate_limit_bad_values_name_their_paths() -> None:
    assert errors({"type": "RateLimit"}) == [
        f"{P}: a RateLimit filter needs `local`, `global` or both"]
    (e,) = errors({"type": "RateLimit", "local": {"requests": -5, "interval_ms": 1000}})
    assert e.startswith(f"{P}.local.requests:")
    (e,) = errors({"type": "RateLimit", "local": {"requests": 5, "interval_ms": 0}})
    assert e.startswith(f"{P}.local.interval_ms:")
    assert errors({"type": "RateLimit", "local": {"requests": 5, "interval_ms": 10,
                                                  "by": "header"}}) == [
        f"{P}.local.header: required with `by: header`"]
    (e,) = errors({"type": "RateLimit", "local": {"requests": 5, "interval_ms": 10,
                                                  "by": "header", "header": "x:y"}})
    assert e.startswith(f"{P}.local.header:")  # a name that cannot exist on the wire
    assert errors({"type": "RateLimit", "local": {"requests": 5, "interval_ms": 10,
                                                  "by": "header", "header": "Authorization"}}) == [
        f"{P}.local.header: 'Authorization' cannot key a limit (framing field or credential)"]
    g = {"requests": 5, "interval_ms": 10, "key": "k"}
    assert errors({"type": "RateLimit", "global": {**g, "redis": "localhost"}}) == [
        f"{P}.global.redis: expected host:port"]
    (e,) = errors({"type": "RateLimit", "global": {**g, "redis": "h:1", "timeout_ms": 5000}})
    assert e.startswith(f"{P}.global.timeout_ms:")
    (e,) = errors({"type": "RateLimit", "global": {**g, "redis": "h:1",
                                                   "failure_mode": "sometimes"}})
    assert e.startswith(f"{P}.global.failure_mode:")


def test_connection_rate_limit_bad_values_name_their_paths() -> None:
    assert net_errors({"type": "rate_limit", "connections": 10, "interval_ms": 1000}) == []
    (e,) = net_errors({"type": "rate_limit", "connections": 0, "interval_ms": 1000})
    assert e.startswith("listeners[0].network_filters[0].connections:")
