"""Gateway API `sessionPersistence` end to end: an HTTPRoute (Cookie) and a GRPCRoute
(Header) applied over the REST API are compiled, pushed to a real client proxy, and traffic
to a Service with two backends shows the session: without a token calls spread, with it every
call reaches the backend that answered first."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from tests.integration.controlplane.test_grpc_routing import _channel, grpc_route, grpc_service
from tests.integration.controlplane.test_routing import (
    Client,
    backend,
    client,
    echo,
    http_route,
    mesh,
    service,
)
from tests.support.controlplane import eventually
from tests.support.grpc_peers import SERVICE, _identity, running_grpc_server
from tests.support.proxy import free_port

NS = "shop"


def round_robin(svc: str) -> dict[str, Any]:
    """Round robin for `svc`: sequential calls alternate, so a session's effect is plain (the
    default, peak-EWMA, sends a lone client's calls to the fastest backend anyway)."""
    return {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "LoadBalancingPolicy",
            "metadata": {"name": f"{svc}-rr", "namespace": NS},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": svc},
                     "type": "RoundRobin"}}


async def call(c: Client, cookie: str = "") -> tuple[str, str]:
    """Who answered `/cart/items`, and the `sid` cookie it set ("" when none)."""
    headers = {"Host": "api"}
    if cookie:
        headers["Cookie"] = f"sid={cookie}"
    async with c.session.get(f"http://127.0.0.1:{c.port}/cart/items", headers=headers) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        sets = r.headers.getall("Set-Cookie", [])
    token = ""
    for line in sets:
        if line.startswith("sid="):
            assert line.endswith("; Path=/cart; HttpOnly"), line
            token = line.split(";", 1)[0].split("=", 1)[1]
    return str(body["name"]), token


async def test_an_httproute_cookie_session_sticks_to_one_backend(tmp_path: Path) -> None:
    out = free_port()
    async with echo("a") as pa, echo("b") as pb:
        rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}],
                                "sessionPersistence": {"sessionName": "sid"},
                                "backendRefs": [{"name": "api", "port": 80}]}
        docs = [backend("api-a", pa, app="api"), backend("api-b", pb, app="api"),
                client("web-0", NS, out), service("api", app="api"),
                http_route("cart", [rule]), round_robin("api")]
        async with mesh(tmp_path, docs, {"web-0": (NS, out)}) as clients:
            c = clients["web-0"]

            async def issued() -> bool:
                try:
                    return bool((await call(c))[1])
                except (AssertionError, OSError, ValueError):
                    return False

            await eventually(issued, timeout=5.0)
            first, token = await call(c)
            assert token
            assert Counter([(await call(c))[0] for _ in range(16)]).keys() == {"a", "b"}
            for _ in range(16):
                who, again = await call(c, token)
                assert (who, again) == (first, "")


def who_with(ch: grpc.Channel, token: str) -> tuple[str, str]:
    """The server that answered `Who`, and the `x-session` it sent back ("" when none)."""
    rpc = ch.unary_unary(f"/{SERVICE}/Who", request_serializer=_identity,
                         response_deserializer=_identity)
    md = (("x-session", token),) if token else ()
    reply, c = rpc.with_call(b"", metadata=md, timeout=5)
    sent = dict(c.initial_metadata() or ()).get("x-session", "")
    return reply.decode(), str(sent)


async def test_a_grpcroute_header_session_sticks_to_one_backend(tmp_path: Path) -> None:
    out = free_port()
    with running_grpc_server("v1") as p1, running_grpc_server("v2") as p2:
        docs = [backend("greeter-v1-0", p1, app="greeter"),
                backend("greeter-v2-0", p2, app="greeter"),
                client("web-0", NS, out), grpc_service("greeter", app="greeter"),
                grpc_route([{"sessionPersistence": {"type": "Header", "sessionName": "x-session"},
                             "backendRefs": [{"name": "greeter", "port": 80}]}]),
                round_robin("greeter")]
        async with mesh(tmp_path, docs, {"web-0": (NS, out)}):
            with _channel(out) as ch:
                async def issued() -> bool:
                    try:
                        return bool((await asyncio.to_thread(who_with, ch, ""))[1])
                    except grpc.RpcError:
                        return False

                await eventually(issued, timeout=5.0)
                first, token = await asyncio.to_thread(who_with, ch, "")
                spread = Counter([(await asyncio.to_thread(who_with, ch, ""))[0]
                                  for _ in range(16)])
                assert spread.keys() == {"v1", "v2"}
                for _ in range(12):
                    who, again = await asyncio.to_thread(who_with, ch, token)
                    assert (who, again) == (first, "")
