"""GRPCRoute through the control plane and real proxies, with real grpcio on both sides: a 70/30
split between two versions of one Service over 500 calls, and service / method / header matches
sending calls to the version they name (issue 8's gRPC side).

Each version is a grpcio server (`tests/support/grpc_peers.py`) whose `Who` method answers its
name; backend workloads have no proxy, so each call crosses exactly one proxy: the client's
outbound listener (h2c), routing on `:authority`, then HTTP/2 to the chosen version."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from tests.integration.controlplane.test_routing import V1, backend, client, mesh
from tests.support.controlplane import eventually
from tests.support.grpc_peers import ADMIN, SERVICE, running_grpc_server, who
from tests.support.proxy import free_port

GRPC_GW = "gateway.networking.k8s.io/v1"


def grpc_service(name: str, **selector: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": selector,
                     "ports": [{"name": "grpc", "port": 80, "targetPort": "http",
                                "appProtocol": "grpc"}]}}


def refs(*backends: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"name": n, "port": 80, "weight": w} for n, w in backends]


def grpc_route(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": GRPC_GW, "kind": "GRPCRoute",
            "metadata": {"name": "greeter", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "greeter",
                                     "port": 80}],
                     "rules": rules}}


def _calls(ch: grpc.Channel, n: int, service: str = SERVICE,
           metadata: tuple[tuple[str, str], ...] = ()) -> Counter[str]:
    return Counter(who(ch, service, metadata) for _ in range(n))


def _channel(port: int) -> grpc.Channel:
    """A channel to the client proxy's outbound listener, calling the Service by name."""
    return grpc.insecure_channel(f"127.0.0.1:{port}",
                                 options=[("grpc.default_authority", "greeter")])




async def test_grpc_split_and_service_method_header_matches(tmp_path: Path) -> None:
    out = free_port()
    with running_grpc_server("v1") as p1, running_grpc_server("v2") as p2:
        docs = [
            backend("greeter-v1-0", p1, app="greeter", version="v1"),
            backend("greeter-v2-0", p2, app="greeter", version="v2"),
            client("web-0", "shop", out),
            grpc_service("greeter", app="greeter", version="v1"),
            grpc_service("greeter-v2", app="greeter", version="v2"),
            grpc_route([
                # A whole service (Exact, no method): always v1, whatever the split says.
                {"matches": [{"method": {"service": ADMIN}}], "backendRefs": refs(("greeter", 1))},
                # Service and method by regular expression, AND a header: the canary, v2.
                {"matches": [{"method": {"type": "RegularExpression",
                                         "service": r"tulle\.test\.E.*", "method": "Wh[o]"},
                              "headers": [{"name": "x-canary", "value": "yes"}]}],
                 "backendRefs": refs(("greeter-v2", 1))},
                # Everything else: 70/30.
                {"backendRefs": refs(("greeter", 70), ("greeter-v2", 30))},
            ]),
        ]
        async with mesh(tmp_path, docs, {"web-0": ("shop", out)}):
            with _channel(out) as ch:
                async def routed() -> bool:
                    try:
                        return await asyncio.to_thread(
                            who, ch, SERVICE, (("x-canary", "yes"),), 2) == "v2"
                    except grpc.RpcError:
                        return False

                await eventually(routed)
                split = await asyncio.to_thread(_calls, ch, 500)
                assert set(split) == {"v1", "v2"}, split
                assert abs(split["v1"] / 500 - 0.70) <= 0.08, split  # 3.9 sd of a 500-call draw
                # 30 calls each: by chance alone all-v1 is 0.7**30 (2e-5), all-v2 0.3**30.
                assert await asyncio.to_thread(_calls, ch, 30, ADMIN) == {"v1": 30}
                assert await asyncio.to_thread(
                    _calls, ch, 30, ADMIN, (("x-canary", "yes"),)) == {"v1": 30}
                assert await asyncio.to_thread(
                    _calls, ch, 30, SERVICE, (("x-canary", "yes"),)) == {"v2": 30}
                # A header value other than the one matched: not the canary, the split.
                assert len(await asyncio.to_thread(
                    _calls, ch, 30, SERVICE, (("x-canary", "no"),))) == 2
