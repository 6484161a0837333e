"""The balancer's settings: every contradiction and impossible value refused with its path."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig import ConfigError, validate


def cfg(policy: str, lb: dict[str, Any] | None = None, protocol: str = "http1",
        weights: tuple[int, ...] = (1, 1)) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "web", "lb_policy": policy, "protocol": protocol,
                         "endpoints": [{"address": "127.0.0.1", "port": 8080 + i, "weight": w}
                                       for i, w in enumerate(weights)]}
    if lb is not None:
        c["lb"] = lb
    return {"clusters": [c]}


def errors_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return [str(e) for e in info.value.errors]


def test_good_settings_for_each_policy_are_taken() -> None:
    for p in ("round_robin", "random", "least_request", "peak_ewma"):
        got = validate(cfg(p, {"slow_start_window_ms": 30_000, "locality_aware": True}))
        assert got.clusters[0].lb_policy == p
    for p in ("ring_hash", "maglev"):
        got = validate(cfg(p, {"hash_policies": [{"type": "header", "name": "x-user"},
                                                 {"type": "source_ip"}]}))
        assert got.clusters[0].lb is not None and len(got.clusters[0].lb.hash_policies) == 2


@pytest.mark.parametrize(("raw", "expected"), [
    (cfg("ring_hash"), "clusters[0].lb.hash_policies: required with lb_policy ring_hash"),
    (cfg("maglev", {}), "clusters[0].lb.hash_policies: required with lb_policy maglev"),
    (cfg("peak_ewma", {"hash_policies": [{"type": "source_ip"}]}),
     "clusters[0].lb.hash_policies: lb_policy peak_ewma does not hash"),
    (cfg("ring_hash", {"hash_policies": [{"type": "header", "name": "x user"}]}),
     "clusters[0].lb.hash_policies[0].name: 'x user' cannot be a header name"),
    (cfg("ring_hash", {"hash_policies": [{"type": "header", "name": ":path"}]}),
     "clusters[0].lb.hash_policies[0].name: ':path' cannot be a header name"),
    (cfg("ring_hash", {"hash_policies": [{"type": "cookie"}]}),
     "clusters[0].lb.hash_policies[0].name: required with type cookie"),
    (cfg("ring_hash", {"hash_policies": [{"type": "source_ip", "name": "x"}]}),
     "clusters[0].lb.hash_policies[0].name: not with type source_ip"),
    (cfg("ring_hash", {"hash_policies": [{"type": "query_parameter", "name": "a&b"}]}),
     "clusters[0].lb.hash_policies[0].name: 'a&b' cannot be a query parameter name"),
    (cfg("maglev", {"hash_policies": [{"type": "source_ip"}], "maglev_table_size": 8192}),
     "clusters[0].lb.maglev_table_size: must be a prime, got 8192"),
    (cfg("maglev", {"hash_policies": [{"type": "source_ip"}], "slow_start_window_ms": 5}),
     "clusters[0].lb.slow_start_window_ms: not with a hashing balancer"),
    (cfg("ring_hash", {"hash_policies": [{"type": "source_ip"}], "locality_aware": True}),
     "clusters[0].lb.locality_aware: not with a hashing balancer"),
    (cfg("ring_hash", {"hash_policies": [{"type": "source_ip"}], "ring_points": 4096},
         weights=(1000, 1000)), "clusters[0].lb.ring_points: the ring would have 8192000"),
    (cfg("maglev", {"hash_policies": [{"type": "source_ip"}]}, protocol="tcp"),
     "clusters[0].lb_policy: maglev hashes requests; a tcp cluster has none"),
    (cfg("peak_ewma", {"panic_threshold_percent": 101}), "clusters[0].lb.panic_threshold_percent"),
    (cfg("peak_ewma", {"choice_count": 1}), "clusters[0].lb.choice_count"),
    (cfg("fastest"), "clusters[0].lb_policy"),
    (cfg("random", weights=(0, 0)), "clusters[0].endpoints[0].weight"),
])
def test_bad_settings_are_refused_with_their_path(raw: dict[str, Any], expected: str) -> None:
    errors = errors_of(raw)
    assert any(e.startswith(expected) for e in errors), errors


def test_a_proxy_without_the_feature_gets_round_robin_and_no_settings() -> None:
    import msgspec

    from tulle.proxyconfig.features import lacking, withhold_config
    from tulle.proxyconfig.stream import decode_snapshot

    raw = cfg("maglev", {"hash_policies": [{"type": "source_ip"}]})
    doc = msgspec.to_builtins(validate(raw))
    withhold_config(doc, [f for f in lacking([]) if f.name == "load-balancing"])
    assert "lb" not in doc["clusters"][0] and "lb_policy" not in doc["clusters"][0]
    old = decode_snapshot(msgspec.Raw(msgspec.json.encode(doc)))
    assert old.clusters[0].lb_policy == "round_robin" and old.clusters[0].lb is None
