"""Writes held to the end of the loop's turn (ADR 0065), through a real proxy with raw peers.

Many connections served in one turn share one flush: every client must get exactly its own
responses, whole and in order, the origin must receive each request once, whole, and a client
that resets while its response is held must not disturb the others' bytes or the listener.
A `Connection: close` response's FIN is held behind it (ADR 0069): each closing client gets
its whole response, then EOF, also when many close in one turn, when one half-closes or resets
while its answer and FIN are held, and when one keeps sending after its request.
"""

from __future__ import annotations

import asyncio

from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import (
    RawServer,
    _head,
    closed_by_peer,
    connect,
    raw_server,
    read_response,
    read_response_within,
    rst,
)


async def echo_path(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keep-alive origin answering each request with its own target as the body."""
    while True:
        head = await _head(srv, r)
        path = head.split(b" ", 2)[1]
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
        await w.drain()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode()


async def test_connections_served_in_one_turn_each_get_their_own_bytes() -> None:
    async with raw_server(echo_path) as origin, running_proxy(simple_config(origin.port)) as p:
        clients = [await connect(p.port()) for _ in range(40)]
        for i, (_, w) in enumerate(clients):  # all sent before anything is read
            w.write(b"".join(get(f"/c{i}-{k}") for k in range(3)))
        for i, (r, w) in enumerate(clients):
            for k in range(3):
                resp = await read_response(r)
                assert (resp.status, resp.body) == (200, f"/c{i}-{k}".encode())
            w.close()
        heads = origin.requests  # each request once, whole, none mixed with another's
        assert sorted(h.split(b" ", 2)[1] for h in heads) == sorted(
            f"/c{i}-{k}".encode() for i in range(40) for k in range(3))
        assert all(h.startswith(b"GET /c") and h.count(b"GET ") == 1 for h in heads)
        assert all(h.endswith(b"\r\n\r\n") for h in heads)


async def test_a_client_reset_while_its_response_is_held_disturbs_no_one() -> None:
    async with raw_server(echo_path) as origin, running_proxy(simple_config(origin.port)) as p:
        gone = [await connect(p.port()) for _ in range(10)]
        stay = [await connect(p.port()) for _ in range(10)]
        for i, (_, w) in enumerate(gone + stay):
            w.write(get(f"/r{i}"))
        for _, w in gone:
            rst(w)  # reset before reading: its response may be held when the turn flushes
        for i, (r, w) in enumerate(stay, start=len(gone)):
            resp = await read_response(r)
            assert (resp.status, resp.body) == (200, f"/r{i}".encode())
            w.close()
        r, w = await connect(p.port())  # the listener still serves
        w.write(get("/after"))
        assert (await read_response(r)).body == b"/after"
        w.close()


def get_close(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()


async def test_closing_connections_served_in_one_turn_each_get_their_response_then_eof() -> None:
    async with raw_server(echo_path) as origin, running_proxy(simple_config(origin.port)) as p:
        for _ in range(3):  # a new connection per request, many at once, as wrk -H close does
            clients = [await connect(p.port()) for _ in range(40)]
            for i, (_, w) in enumerate(clients):
                w.write(get_close(f"/k{i}"))
            for i, (r, w) in enumerate(clients):
                resp = await read_response_within(r)
                assert (resp.status, resp.body) == (200, f"/k{i}".encode())
                assert await asyncio.wait_for(closed_by_peer(r), 3)  # the FIN, after it
                w.close()
        assert len(origin.requests) == 120


async def test_closing_clients_that_half_close_reset_or_keep_sending_disturb_no_one() -> None:
    async with raw_server(echo_path) as origin, running_proxy(simple_config(origin.port)) as p:
        half = [await connect(p.port()) for _ in range(10)]
        gone = [await connect(p.port()) for _ in range(10)]
        chatty = [await connect(p.port()) for _ in range(10)]
        for i, (_, w) in enumerate(half + gone + chatty):
            w.write(get_close(f"/h{i}"))
        for _, w in half:
            w.write_eof()  # request, then FIN: the answer and the close may be held together
        for _, w in gone:
            rst(w)  # reset while its answer and FIN may be held
        for _, w in chatty:
            w.write(b"x" * 4096)  # bytes after a closing request: drained, never parsed
        for i, (r, w) in enumerate(half):
            resp = await read_response_within(r)
            assert (resp.status, resp.body) == (200, f"/h{i}".encode())
            assert await asyncio.wait_for(closed_by_peer(r), 3)
            w.close()
        for i, (r, w) in enumerate(chatty, start=len(half) + len(gone)):
            resp = await read_response_within(r)
            assert (resp.status, resp.body) == (200, f"/h{i}".encode())
            assert await asyncio.wait_for(closed_by_peer(r), 3)
            w.close()
        r, w = await connect(p.port())  # the listener still serves
        w.write(get_close("/after"))
        assert (await read_response_within(r)).body == b"/after"
        assert await asyncio.wait_for(closed_by_peer(r), 3)
        w.close()
