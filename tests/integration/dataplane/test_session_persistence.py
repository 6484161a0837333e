"""Session persistence through a real proxy (real sockets, two upstreams that say who they
are): without it requests spread; with a Cookie or Header session every request that brings
the token back reaches one endpoint; when that endpoint leaves (removed, or stopped under a
retry policy) the next request goes elsewhere and gets a new token; hostile tokens are
balanced and replaced, the listener keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tulle.dataplane.filters.session_token import decode
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate


class Upstreams:
    """Servers that answer every request with their own name as the body (keep-alive)."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self.names: list[bytes] = []
        self.clients: dict[bytes, set[asyncio.StreamWriter]] = {}

    async def start(self, name: bytes) -> None:
        clients = self.clients.setdefault(name, set())

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            clients.add(w)
            try:
                while True:
                    await r.readuntil(b"\r\n\r\n")
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b"
                            % (len(name), name))
                    await w.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                clients.discard(w)
                w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(srv)
        self.ports.append(srv.sockets[0].getsockname()[1])
        self.names.append(name)

    def stop(self, name: bytes) -> None:
        srv = self.servers[self.names.index(name)]
        srv.close()
        for w in list(self.clients[name]):  # the proxy's pooled connections too
            w.close()

    def close(self) -> None:
        for s in self.servers:
            s.close()


def config(ports: list[int], session: dict[str, Any] | None,
           retry: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}],
                            "backends": [{"cluster": "shop"}]}
    if session is not None:
        rule["filters"] = [{"type": "SessionPersistence", **session}]
    if retry:
        rule["retry"] = {"num_retries": 2, "retry_on": ["connect-failure"],
                         "backoff_base_ms": 1, "backoff_max_ms": 2}
    return {"listeners": [{"name": "out", "port": 0, "route_table": "rt"}],
            "clusters": [{"name": "shop", "lb_policy": "round_robin",
                          "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports]}],
            "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any",
                                                                "rules": [rule]}]}]}


async def get(port: int, headers: bytes = b"") -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """One request on a new connection: status, response headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /cart/items HTTP/1.1\r\nhost: shop\r\n" + headers + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            if line:
                n, _, v = line.partition(b":")
                fields.setdefault(n.strip().lower(), []).append(v.strip())
        body = await asyncio.wait_for(
            reader.readexactly(int(fields[b"content-length"][0])), 5.0)
        return status, fields, body
    finally:
        writer.close()


def cookie_token(fields: dict[bytes, list[bytes]], name: bytes = b"sid") -> bytes | None:
    for v in fields.get(b"set-cookie", []):
        if v.startswith(name + b"="):
            return v.split(b";", 1)[0].split(b"=", 1)[1]
    return None


@asynccontextmanager
async def proxy(cfg: dict[str, Any]) -> AsyncIterator[tuple[ProxyServer, int]]:
    server = ProxyServer()
    await server.apply(validate(cfg))
    try:
        yield server, server.bound_port("out")
    finally:
        await server.close()


@asynccontextmanager
async def upstreams() -> AsyncIterator[Upstreams]:
    ups = Upstreams()
    try:
        await ups.start(b"A")
        await ups.start(b"B")
        yield ups
    finally:
        ups.close()


async def test_without_persistence_requests_spread() -> None:
    async with upstreams() as ups, proxy(config(ups.ports, None)) as (_, port):
        seen = {(await get(port))[2] for _ in range(10)}
        assert seen == {b"A", b"B"}


async def test_a_cookie_session_keeps_every_request_on_one_endpoint_until_it_leaves() -> None:
    async with upstreams() as ups, proxy(config(ups.ports, {"name": "sid",
                                                            "path": "/cart"})) as (server, port):
        status, fields, first = await get(port)
        assert status == 200
        (line,) = fields[b"set-cookie"]
        assert line.endswith(b"; Path=/cart; HttpOnly") and b"Max-Age" not in line
        token = cookie_token(fields)
        assert token is not None
        for _ in range(12):  # round robin would alternate: the cookie holds it
            status, fields, body = await get(port, b"cookie: a=1; sid=" + token + b"\r\n")
            assert (status, body) == (200, first)
            assert b"set-cookie" not in fields  # the client's cookie is still right
        # Without the cookie the same proxy still balances.
        assert {(await get(port))[2] for _ in range(6)} == {b"A", b"B"}
        # The endpoint leaves the cluster (its workload stopped: the control plane removes it).
        other = b"B" if first == b"A" else b"A"
        left = [p for p, n in zip(ups.ports, ups.names, strict=True) if n != first]
        await server.apply(validate(config(left, {"name": "sid", "path": "/cart"})))
        status, fields, body = await get(port, b"cookie: sid=" + token + b"\r\n")
        assert (status, body) == (200, other)
        new = cookie_token(fields)
        assert new is not None and new != token
        for _ in range(3):
            assert (await get(port, b"cookie: sid=" + new + b"\r\n"))[2] == other


async def test_a_stopped_endpoint_under_a_retry_policy_answers_from_the_other_with_a_new_cookie(
) -> None:
    async with upstreams() as ups, proxy(config(ups.ports, {"name": "sid"},
                                                retry=True)) as (_, port):
        _, fields, first = await get(port)
        token = cookie_token(fields)
        assert token is not None
        assert (await get(port, b"cookie: sid=" + token + b"\r\n"))[2] == first
        ups.stop(first)  # its socket refuses: the pinned try fails, the retry goes elsewhere
        status, fields, body = await get(port, b"cookie: sid=" + token + b"\r\n")
        assert status == 200 and body != first
        new = cookie_token(fields)
        assert new is not None and new != token
        for _ in range(4):
            assert (await get(port, b"cookie: sid=" + new + b"\r\n"))[2] == body


async def test_a_header_session_with_timeouts() -> None:
    session = {"name": "x-session", "kind": "Header", "idle_timeout_ms": 60_000,
               "absolute_timeout_ms": 3_600_000}
    async with upstreams() as ups, proxy(config(ups.ports, session)) as (_, port):
        _, fields, first = await get(port)
        (token,) = fields[b"x-session"]
        for _ in range(8):
            _, fields, body = await get(port, b"x-session: " + token + b"\r\n")
            assert body == first
            (refreshed,) = fields[b"x-session"]  # an idle timeout: refreshed on every use
            tok = decode(refreshed, 0.0)
            assert tok is not None and tok.idle_expiry > 0 and tok.absolute_expiry > 0
            token = refreshed


async def test_hostile_tokens_are_balanced_and_replaced_and_the_listener_keeps_serving() -> None:
    async with upstreams() as ups, proxy(config(ups.ports, {"name": "sid"})) as (_, port):
        for bad in (b"garbage", b"A" * 23, b"%00%00", b"\xff" * 30, b"A" * 3000,
                    b"=" * 23, b"sid=" * 50):
            status, fields, _ = await get(port, b"cookie: sid=" + bad + b"\r\n")
            assert status == 200, bad
            assert cookie_token(fields) is not None
        # Far too large a cookie is the listener's header limit, not the filter's.
        status, _, _ = await get(port, b"cookie: sid=" + b"A" * 200_000 + b"\r\n")
        assert status == 431
        assert (await get(port))[0] == 200


async def test_a_token_for_another_backend_of_a_weighted_rule_takes_that_backend() -> None:
    """A rule split 50/50 over two clusters: a token naming the second cluster's endpoint
    sends every request there, whichever backend the split would have picked."""
    async with upstreams() as ups:
        cfg = config(ups.ports[:1], {"name": "sid"})
        cfg["clusters"].append({"name": "shop-b", "endpoints": [
            {"address": "127.0.0.1", "port": ups.ports[1]}]})
        rule = cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]
        rule["backends"] = [{"cluster": "shop", "weight": 1}, {"cluster": "shop-b", "weight": 1}]
        async with proxy(cfg) as (_, port):
            tokens: dict[bytes, bytes] = {}
            for _ in range(40):
                _, fields, body = await get(port)
                tok = cookie_token(fields)
                assert tok is not None
                tokens[body] = tok
                if len(tokens) == 2:
                    break
            assert set(tokens) == {b"A", b"B"}  # the split sends new sessions to both
            for name, tok in tokens.items():
                for _ in range(8):
                    status, fields, body = await get(port, b"cookie: sid=" + tok + b"\r\n")
                    assert (status, body) == (200, name)
                    assert cookie_token(fields) is None
