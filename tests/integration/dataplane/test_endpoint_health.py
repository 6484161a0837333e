"""Endpoint health through a real proxy: outlier detection ejects a dead endpoint within the
run, and active health checks take an endpoint out and bring it back (ADR 0040)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.killable import drive, killable_origins, now
from tests.support.proxy import running_proxy, simple_config


def three_endpoints(ports: list[int], **cluster: Any) -> dict[str, Any]:
    cfg = simple_config(ports[0])
    c = cfg["clusters"][0]
    c["endpoints"] = [{"address": "127.0.0.1", "port": p} for p in ports]
    c.update(cluster)
    return cfg


async def until(cond: Any, what: str, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_one_of_three_endpoints_dies_success_stays_above_99_9_and_it_is_ejected_fast(
) -> None:
    total, kill_at = 4000, 400
    async with killable_origins(3) as origins:
        cfg = three_endpoints([o.port for o in origins],
                              outlier_detection={"consecutive_local_origin_failures": 3})
        async with running_proxy(cfg) as p:
            rt = p.server.clusters.clusters["backend"]
            dead = rt.endpoints[2]
            killed_at = ejected_at = 0.0

            def watch(n: int) -> None:
                nonlocal killed_at, ejected_at
                if n == kill_at and not killed_at:
                    origins[2].kill()
                    killed_at = now()
                if killed_at and not ejected_at and not dead.healthy:
                    ejected_at = now()

            statuses = await drive(p.port(), total, 4, watch)
            assert killed_at and ejected_at, statuses
            ok = statuses[200] / total
            assert ok >= 0.999, statuses
            assert ejected_at - killed_at < 2.0
            assert p.metric("tulle_proxy_upstream_ejections_total", cluster="backend",
                            reason="consecutive_local_origin_failures") == 1
            assert p.metric("tulle_proxy_upstream_endpoint_healthy",
                            endpoint=dead.key) == 0
            assert p.server.health.why("backend", dead.key).startswith(
                "ejected (consecutive_local_origin_failures)")
            assert origins[0].served + origins[1].served >= total - kill_at


async def test_all_endpoints_failing_never_empties_the_cluster() -> None:
    async with killable_origins(3) as origins:
        for o in origins:
            o.statuses["/work"] = 500
        async with running_proxy(three_endpoints([o.port for o in origins],
                                                 outlier_detection={})) as p:
            statuses = await drive(p.port(), 60, 1)
            assert statuses[500] == 60  # one ejected at most (10%, at least one); no 503 UH
            rt = p.server.clusters.clusters["backend"]
            assert sum(not e.healthy for e in rt.endpoints) == 1


async def test_an_http_health_check_takes_an_endpoint_out_and_brings_it_back() -> None:
    async with killable_origins(2) as origins:
        origins[1].statuses["/healthz"] = 503
        cfg = three_endpoints([o.port for o in origins], health_check={
            "type": "http", "path": "/healthz", "interval_ms": 20, "timeout_ms": 20,
            "jitter_ms": 5, "unhealthy_threshold": 2, "healthy_threshold": 2})
        async with running_proxy(cfg) as p:
            rt = p.server.clusters.clusters["backend"]
            sick = rt.endpoints[1]
            await until(lambda: not sick.healthy, "the failing endpoint out")
            assert rt.endpoints[0].healthy
            assert p.server.health.why("backend", sick.key).startswith("failing health checks")
            statuses = await drive(p.port(), 50, 1)
            assert statuses[200] == 50
            served_before = origins[1].served
            await drive(p.port(), 20, 1)
            # only probes reached it, no request
            assert origins[1].served - served_before <= 3
            origins[1].statuses["/healthz"] = 200
            await until(lambda: sick.healthy, "back after two passed probes")
            assert p.metric("tulle_proxy_upstream_health_checks_total", cluster="backend",
                            result="failure") >= 2


async def test_a_tcp_health_check_sees_a_refused_port() -> None:
    async with killable_origins(2) as origins:
        cfg = three_endpoints([o.port for o in origins], health_check={
            "type": "tcp", "interval_ms": 20, "timeout_ms": 20, "jitter_ms": 0,
            "unhealthy_threshold": 1})
        async with running_proxy(cfg) as p:
            rt = p.server.clusters.clusters["backend"]
            origins[0].kill()
            await until(lambda: not rt.endpoints[0].healthy, "the refused endpoint out")
            assert rt.endpoints[1].healthy
            assert (await drive(p.port(), 10, 1))[200] == 10
