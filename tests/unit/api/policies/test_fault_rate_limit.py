"""FaultInjectionPolicy and RateLimitPolicy: the ADR 0037 shapes, and impossible values refused
with their field paths."""

from __future__ import annotations

from typing import Any

from tests.unit.api.support import errors_of, with_

from tulle.api import parse
from tulle.api.policies.fault_injection import FaultInjectionPolicy
from tulle.api.policies.rate_limit import RateLimitPolicy

FIP: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "FaultInjectionPolicy",
    "metadata": {"name": "chaos", "namespace": "shop"},
    "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                           "name": "r", "sectionName": "slow"},
             "delay": {"fixedDelay": "50ms", "percent": 10},
             "abort": {"httpStatus": 503, "grpcStatus": 14, "percent": 5},
             "match": {"headers": [{"name": "x-chaos", "value": "on"}]}},
}
RLP: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "RateLimitPolicy",
    "metadata": {"name": "rl", "namespace": "shop"},
    "spec": {"targetRef": {"group": "", "kind": "Service", "name": "reviews"},
             "local": {"requests": 100, "interval": "1s", "by": {"type": "Header",
                                                                 "name": "x-tenant"}},
             "global": {"requests": 1000, "interval": "1s", "redis": "127.0.0.1:6379",
                        "failureMode": "Open", "fallbackRequests": 500},
             "tcp": {"connections": 50, "interval": "1s"}},
}


def test_valid_policies_parse() -> None:
    assert isinstance(parse(FIP), FaultInjectionPolicy)
    rl = parse(RLP)
    assert isinstance(rl, RateLimitPolicy)
    assert rl.spec.global_ is not None and rl.spec.global_.requests == 1000


def test_fault_injection_bad_input_has_paths() -> None:
    assert errors_of(with_(FIP, "spec.delay.percent", 101))[0][0] == "spec.delay.percent"
    assert errors_of(with_(FIP, "spec.delay.fixedDelay", "0s")) == [
        ("spec.delay.fixedDelay", "must be from 1ms to 1h")]
    assert errors_of(with_(FIP, "spec.abort", {"percent": 5})) == [
        ("spec.abort", "set httpStatus, grpcStatus or both")]
    assert errors_of(with_(FIP, "spec.abort.grpcStatus", 0))[0][0] == "spec.abort.grpcStatus"
    assert errors_of(with_(FIP, "spec.match.headers.0.name", "bad name"))[0][0] == \
        "spec.match.headers[0].name"
    doc = with_(FIP, "spec.delay", None)
    assert errors_of(with_(doc, "spec.abort", None))[0][1] == "set at least one of delay, abort"
    mesh = with_(FIP, "spec.targetRef", {"group": "mesh.tulle.dev", "kind": "Mesh",
                                         "name": "default"})
    assert errors_of(mesh)[0][0] == "spec.targetRef.kind"  # server side: no Mesh-wide chaos


def test_rate_limit_bad_input_has_paths() -> None:
    assert errors_of(with_(RLP, "spec.local.requests", -5))[0][0] == "spec.local.requests"
    assert errors_of(with_(RLP, "spec.local.interval", "0s")) == [
        ("spec.local.interval", "must be from 1ms to 24h")]
    assert errors_of(with_(RLP, "spec.local.by", {"type": "Header"})) == [
        ("spec.local.by.name", "required with type Header")]
    assert errors_of(with_(RLP, "spec.local.by.name", "x:y"))[0][0] == "spec.local.by.name"
    assert errors_of(with_(RLP, "spec.local.by.name", "Cookie"))[0][0] == "spec.local.by.name"
    assert errors_of(with_(RLP, "spec.global.redis", "redis"))[0][0] == "spec.global.redis"
    assert errors_of(with_(RLP, "spec.global.timeout", "5s")) == [
        ("spec.global.timeout", "must be from 1ms to 1s")]
    assert errors_of(with_(RLP, "spec.global.failureMode", "Closed")) == [
        ("spec.global.fallbackRequests", "only with failureMode Open")]
    assert errors_of(with_(RLP, "spec.tcp.connections", 0))[0][0] == "spec.tcp.connections"
    route = with_(RLP, "spec.targetRef", {"group": "gateway.networking.k8s.io",
                                          "kind": "HTTPRoute", "name": "r"})
    assert errors_of(route) == [("spec.tcp", "does not apply to a route (routes carry "
                                 "requests, not connections)")]
    empty = {**RLP, "spec": {"targetRef": RLP["spec"]["targetRef"]}}
    assert errors_of(empty)[0][1] == "set at least one of local, global, tcp"


def test_redis_credentials_and_tls_are_paths_never_secrets() -> None:
    assert errors_of(with_(RLP, "spec.global.passwordFile", "/etc/tulle/pw")) == []
    assert errors_of(with_(RLP, "spec.global.passwordFile", "pw"))[0][0] == \
        "spec.global.passwordFile"  # absolute paths only
    assert errors_of(with_(RLP, "spec.global.username", "tulle")) == [
        ("spec.global.username", "needs passwordFile")]
    assert errors_of(with_(RLP, "spec.global.tls", {"caFile": "ca.pem"}))[0][0] == \
        "spec.global.tls.caFile"
    assert errors_of(with_(RLP, "spec.global.tls", {"serverName": "redis.shop"})) == []
    assert errors_of(with_(RLP, "spec.global.password", "hunter2"))[0][0] == \
        "spec.global.password"  # no field takes the password itself
