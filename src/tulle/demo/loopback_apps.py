"""The loopback demo's sample application: a `frontend` that calls a `backend` through its
sidecar.

Run one with `python -m tulle.demo.loopback_apps frontend PORT OUTBOUND_URL` or
`python -m tulle.demo.loopback_apps backend PORT VERSION`.  The frontend knows the backend
only by name (`http://backend/...`); it reaches it through its sidecar's outbound listener,
exactly as a meshed workload would.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from aiohttp import ClientSession, ClientTimeout, web


def backend_app(version: str) -> web.Application:
    async def item(request: web.Request) -> web.Response:
        await asyncio.sleep(random.uniform(0.0005, 0.003))
        return web.json_response({"service": "backend", "version": version, "pid": os.getpid(),
                                  "item": request.match_info["id"],
                                  "requestId": request.headers.get("x-request-id", "")})

    app = web.Application()
    app.router.add_get("/items/{id}", item)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok\n"))  # type: ignore[arg-type,return-value]
    return app


def frontend_app(outbound: str) -> web.Application:
    session: dict[str, ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = ClientSession(timeout=ClientTimeout(total=5))

    async def stop(app: web.Application) -> None:
        await session["s"].close()

    async def page(request: web.Request) -> web.Response:
        n = random.randint(1, 100)
        # The request goes to the sidecar's outbound listener; Host names the service.
        async with session["s"].get(f"{outbound}/items/{n}", headers={"Host": "backend"}) as r:
            body = await r.json() if r.status == 200 else {"error": r.status}
        return web.json_response({"service": "frontend", "backend": body},
                                 status=200 if r.status == 200 else 502)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/", page)
    app.router.add_get("/healthz", health)
    return app


def main() -> None:
    role, port = sys.argv[1], int(sys.argv[2])
    app = backend_app(sys.argv[3]) if role == "backend" else frontend_app(sys.argv[3])
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
