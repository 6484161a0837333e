"""The demo's sample services: ordinary programs that know nothing of the mesh.

    python -m tulle.demo.apps catalog PORT VERSION
    python -m tulle.demo.apps flaky PORT FAILURE_SHARE
    python -m tulle.demo.apps inventory PORT                       (gRPC)
    python -m tulle.demo.apps web PORT CATALOG_URL FLAKY_URL INVENTORY_TARGET
    python -m tulle.demo.apps load URL RPS

They call each other by service name (`catalog.shop.svc.cluster.local`) through their pod's
ordinary resolver and sockets; the pod's iptables rules take the DNS query to the sidecar's
resolver and the connection to its outbound listener, which routes, retries and wraps it in
mTLS.  `web` answers with what it got from each, so a caller sees which catalog version
served it.  aiohttp and grpcio come with the `test` extras (`make demo` installs them).
gRPC without generated stubs: the messages are JSON bytes, the method `/demo.Inventory/Check`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

INVENTORY_METHOD = "/demo.Inventory/Check"


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def catalog_app(version: str) -> web.Application:
    async def item(request: web.Request) -> web.Response:
        await asyncio.sleep(random.uniform(0.0005, 0.002))
        return _json(200, {"service": "catalog", "version": version,
                           "item": request.match_info["id"], "pid": os.getpid()})

    app = web.Application()
    app.router.add_get("/items/{id}", item)
    return app


def flaky_app(share: float) -> web.Application:
    """Answers 503 to `share` of the requests: the caller's retry policy hides it."""
    async def price(request: web.Request) -> web.Response:
        if random.random() < share:
            return _json(503, {"service": "flaky", "error": "try again"})
        return _json(200, {"service": "flaky", "price": random.randint(1, 100)})

    app = web.Application()
    app.router.add_get("/{tail:.*}", price)
    return app


async def serve_inventory(port: int) -> None:
    import grpc

    def check(request: bytes, context: Any) -> bytes:
        item = json.loads(request or b"{}").get("item", 0)
        return json.dumps({"service": "inventory", "item": item,
                           "inStock": random.randint(0, 20)}).encode()

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "demo.Inventory", {"Check": grpc.unary_unary_rpc_method_handler(check)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    await server.start()
    await server.wait_for_termination()


def web_app(catalog: str, flaky: str, inventory: str) -> web.Application:
    state: dict[str, Any] = {}

    async def start(app: web.Application) -> None:
        import grpc
        state["http"] = ClientSession(timeout=ClientTimeout(total=5))
        # An ordinary gRPC client: the target is a service name, resolved by the pod's
        # resolver (`native`: getaddrinfo, set by the demo), no proxy, no TLS of its own.
        state["grpc"] = grpc.aio.insecure_channel(inventory, options=[("grpc.enable_http_proxy", 0)])
        state["check"] = state["grpc"].unary_unary(INVENTORY_METHOD)

    async def stop(app: web.Application) -> None:
        await state["http"].close()
        await state["grpc"].close()

    async def get(url: str) -> tuple[int, dict[str, Any]]:
        try:
            async with state["http"].get(url) as r:
                body = await r.json(content_type=None) if r.status == 200 else {}
                return r.status, body
        except (TimeoutError, ClientError, ValueError):
            return 0, {}

    async def stock(item: int) -> dict[str, Any]:
        try:
            reply = await state["check"](json.dumps({"item": item}).encode(), timeout=5)
            return dict(json.loads(reply))
        except Exception as exc:  # a gRPC error of any kind is the answer's "inventory"
            return {"error": type(exc).__name__}

    async def page(request: web.Request) -> web.Response:
        item = random.randint(1, 100)
        (cat_status, cat), (fl_status, _), inv = await asyncio.gather(
            get(f"{catalog}/items/{item}"), get(flaky), stock(item))
        ok = cat_status == 200 and fl_status == 200 and "error" not in inv
        return _json(200 if ok else 502, {
            "service": "web", "catalog": cat.get("version", cat_status),
            "flaky": fl_status, "inventory": inv.get("inStock", inv.get("error"))})

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/", page)
    return app


async def load(url: str, rps: float, inflight: int = 64) -> None:
    """GET `url` at `rps` until killed; one line of counts every 5 s on stdout."""
    codes: dict[str, int] = {}
    versions: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()
    async with ClientSession(timeout=ClientTimeout(total=10),
                             connector=TCPConnector(limit=inflight)) as s:
        async def one() -> None:
            try:
                async with s.get(url) as r:
                    body = await r.json(content_type=None)
                    code = str(r.status)
                    v = str(body.get("catalog", "-"))
                    versions[v] = versions.get(v, 0) + 1
            except (TimeoutError, ClientError, ValueError) as exc:
                code = type(exc).__name__
            codes[code] = codes.get(code, 0) + 1

        start = time.monotonic()
        sent = 0
        next_line = start + 5
        while True:
            if len(tasks) < inflight:
                t = asyncio.create_task(one())
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            sent += 1
            now = time.monotonic()
            if now >= next_line:
                next_line += 5
                print(json.dumps({"t": round(now - start), "codes": codes,
                                  "catalog": versions}), flush=True)
            await asyncio.sleep(max(0.0, start + sent / rps - time.monotonic()))


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "inventory":
        asyncio.run(serve_inventory(int(args[0])))
        return
    if role == "load":
        asyncio.run(load(args[0], float(args[1])))
        return
    if role == "catalog":
        app = catalog_app(args[1])
    elif role == "flaky":
        app = flaky_app(float(args[1]))
    elif role == "web":
        app = web_app(args[1], args[2], args[3])
    else:
        raise SystemExit(f"unknown role {role!r}")
    web.run_app(app, host="0.0.0.0", port=int(args[0]), access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
