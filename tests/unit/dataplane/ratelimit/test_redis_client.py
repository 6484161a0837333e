"""The RESP client: encoding, parsing split replies, and failing fast when Redis is down."""

from __future__ import annotations

import asyncio

import pytest
from tests.support.proxy import free_port

from tulle.dataplane.ratelimit.redis import RedisClient, RedisError, ReplyParser, encode


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode(b"INCR", b"k") == b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n"


def test_replies_split_anywhere_come_out_whole_and_in_order() -> None:
    wire = b":7\r\n+OK\r\n-ERR wrong type\r\n$3\r\nabc\r\n$-1\r\n:-2\r\n"
    for cut in range(len(wire)):
        p = ReplyParser()
        out = p.feed(wire[:cut]) + p.feed(wire[cut:])
        assert out[:2] == [7, b"OK"] and out[3:] == [b"abc", None, -2], cut
        assert isinstance(out[2], RedisError) and "wrong type" in str(out[2])


def test_a_reply_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError):
        ReplyParser().feed(b"*1\r\n:1\r\n")


async def test_an_unreachable_redis_fails_the_call_then_fails_fast_while_down() -> None:
    c = RedisClient("127.0.0.1", free_port(), retry_interval=30.0)
    first = c.call(encode(b"PING"))
    with pytest.raises(RedisError):
        await asyncio.wait_for(first[0], 2)
    again = c.call(encode(b"PING"))
    assert again[0].done()  # down: no connection attempt, decided at once
    with pytest.raises(RedisError):
        again[0].result()
    c.close()


async def test_a_server_that_sends_garbage_fails_the_waiting_calls() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        w.write(b"?what\r\n")
        await w.drain()

    srv = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    c = RedisClient("127.0.0.1", port)
    futures = c.call(encode(b"INCR", b"k"), encode(b"PTTL", b"k"))
    for f in futures:
        with pytest.raises(RedisError):
            await asyncio.wait_for(f, 2)
    c.close()
    srv.close()
    await srv.wait_closed()


async def test_a_connection_that_owes_replies_and_stays_silent_is_replaced() -> None:
    # The first connection reads commands and never answers (lost without a reset); the next
    # one answers.  Calls made while the first still owes replies inside `stall_interval` go
    # to it; the first call after that gives it up (down for `retry_interval`, failing at
    # once), and the one after that reaches the new connection (ADR 0103).
    conns: list[asyncio.StreamWriter] = []

    async def server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)
        silent = len(conns) == 1
        while data := await r.read(1024):
            if not silent:
                w.write(b":1\r\n" * data.count(b"INCR"))

    srv = await asyncio.start_server(server, "127.0.0.1", 0)
    c = RedisClient("127.0.0.1", srv.sockets[0].getsockname()[1], retry_interval=0.05)
    c.stall_interval = 0.2
    try:
        owed = c.call(encode(b"INCR", b"k"))
        await asyncio.sleep(0.05)
        assert not owed[0].done() and len(conns) == 1
        assert not c.call(encode(b"INCR", b"k"))[0].done()  # still within the interval
        await asyncio.sleep(0.25)
        given_up = c.call(encode(b"INCR", b"k"))
        assert given_up[0].done() and owed[0].done()  # the old connection's calls failed
        with pytest.raises(RedisError):
            owed[0].result()
        await asyncio.sleep(0.1)
        answered = c.call(encode(b"INCR", b"k"))
        assert await asyncio.wait_for(answered[0], 2) == 1
        assert len(conns) == 2
    finally:
        c.close()
        for w in conns:
            w.close()
        srv.close()
