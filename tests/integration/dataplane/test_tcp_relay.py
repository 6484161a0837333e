"""Opaque TCP through a `tcp` listener: bulk transfer both ways, half-close, round robin, failures.

Every test runs against both relay engines: `os.splice` (plaintext, the normal path) and the
asyncio copy relay (its fallback, forced with the module switch).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.support.proxy import RunningProxy, free_port, running_proxy

from tulle.dataplane.network import relay as tcp
from tulle.dataplane.network import splice

pytestmark = pytest.mark.both_loops

MiB = 1 << 20

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["splice", "copy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "copy":
        monkeypatch.setattr(tcp, "USE_SPLICE", False)
    return str(request.param)


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(r, w)
        finally:
            w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in tasks:
            t.cancel()


def tcp_config(*ports: int, connect_timeout_ms: int = 1000,
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "admin": {"port": 0},
        "settings": settings or {},
        "listeners": [{"name": "out", "port": 0, "protocol": "tcp", "cluster": "backend"}],
        "clusters": [{"name": "backend", "protocol": "tcp", "connect_timeout_ms": connect_timeout_ms,
                      "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports]}],
    }


def chunks(seed: int, total: int, size: int = MiB) -> list[bytes]:
    """`total` bytes of seeded random data as a few distinct pieces reused in a fixed order."""
    rnd = random.Random(seed)
    pieces = [rnd.randbytes(size) for _ in range(4)]
    return [pieces[i % 4][: min(size, total - i * size)] for i in range((total + size - 1) // size)]


async def send_all(w: asyncio.StreamWriter, data: list[bytes]) -> str:
    """Send everything, then half-close; the digest of what was sent."""
    h = hashlib.sha256()
    for c in data:
        h.update(c)
        w.write(c)
        await w.drain()
    w.write_eof()
    return h.hexdigest()


async def read_all(r: asyncio.StreamReader) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while chunk := await r.read(MiB):
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


@pytest.fixture
def reads_while_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stdlib loop's socket transport as CPython 3.11.0-3.11.2 ship it: its `_add_reader`
    registers the reader even while reading is paused (3.11.7 has the fix), so bytes arrive in
    `data_received` after `pause_reading()`.  Debian 12's interpreter is 3.11.2."""
    from asyncio import selector_events

    def _add_reader(self: Any, fd: int, callback: Any, *args: Any) -> None:
        if self._closing:
            return
        self._loop._add_reader(fd, callback, *args)

    monkeypatch.setattr(selector_events._SelectorTransport, "_add_reader", _add_reader)


async def test_bytes_read_before_the_upstream_is_up_go_first_on_a_transport_that_reads_while_paused(
        reads_while_paused: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy relay holds what the client sends before the upstream connection is up and
    writes it first.  A transport that keeps reading while paused delivered more in the
    window between the upstream's `connection_made` and that write, and the relay wrote those
    bytes straight through, ahead of the held ones: the stream arrived reordered."""
    if not isinstance(asyncio.get_running_loop(), asyncio.selector_events.BaseSelectorEventLoop):
        pytest.skip("the stdlib selector transport's behaviour; uvloop's pauses")
    monkeypatch.setattr(tcp, "USE_SPLICE", False)
    size = 8 * MiB
    got: dict[str, Any] = {}
    done = asyncio.Event()

    async def server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got["recv"] = await read_all(r)
        done.set()

    for _ in range(3):  # the window is a loop turn or two: bounded retries of a fresh stream
        done.clear()
        async with tcp_server(server) as port, running_proxy(tcp_config(port)) as p:
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            sent = await send_all(w, chunks(1, size))
            await asyncio.wait_for(done.wait(), 60)
            w.close()
            assert got["recv"] == (size, sent)


async def test_bulk_transfer_both_ways_at_once(engine: str) -> None:
    size = 200 * MiB if engine == "splice" else 32 * MiB
    got_by_server: dict[str, Any] = {}
    server_done = asyncio.Event()

    async def server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sending = asyncio.create_task(send_all(w, chunks(2, size)))
        got_by_server["recv"] = await read_all(r)
        got_by_server["sent"] = await sending
        server_done.set()

    async with tcp_server(server) as port, running_proxy(tcp_config(port)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        relays = list(p.server.listeners["out"].connections)
        sending = asyncio.create_task(send_all(w, chunks(1, size)))
        received = await asyncio.wait_for(read_all(r), 120)
        sent_digest = await sending
        # The client may finish first: the proxy can still be relaying its last bytes.
        await asyncio.wait_for(server_done.wait(), 60)
        w.close()
        assert got_by_server["recv"] == (size, sent_digest)
        assert received == (size, got_by_server["sent"])
        kind = type(relays[0]).__name__
        assert kind == ("SpliceRelay" if engine == "splice" else "CopyRelay")
        assert p.metric("tulle_proxy_tcp_bytes_total", direction="received") == size
        assert p.metric("tulle_proxy_tcp_bytes_total", direction="sent") == size
        assert p.metric("tulle_proxy_tcp_connections_total", cluster="backend") == 1


async def test_half_close_the_server_answers_after_the_client_finished_sending(engine: str) -> None:
    async def digest_then_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n, digest = await read_all(r)  # to EOF: only the client's FIN ends this
        w.write(f"{n} {digest}\n".encode())
        await w.drain()

    payload = b"".join(chunks(3, 3 * MiB + 17))
    async with tcp_server(digest_then_answer) as port, running_proxy(tcp_config(port)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        w.write(payload)
        await w.drain()
        w.write_eof()
        answer = await asyncio.wait_for(r.read(), 10)
        w.close()
        assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
        await until(lambda: not p.server.listeners["out"].connections)
        assert p.metric("tulle_proxy_upstream_connections_active", cluster="backend") == 0


async def test_the_server_closing_first_lets_the_client_keep_sending(engine: str) -> None:
    async def greet_then_listen(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"bye early\n")
        w.write_eof()  # our half is done; still reading
        n, _ = await read_all(r)
        # The write side is shut, so report the count through a side channel: the log.
        seen.append(n)

    seen: list[int] = []
    async with tcp_server(greet_then_listen) as port, running_proxy(tcp_config(port)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        assert await asyncio.wait_for(r.read(), 10) == b"bye early\n"  # FIN reached us
        w.write(b"x" * 100_000)
        await w.drain()
        w.write_eof()
        await until(lambda: seen == [100_000])
        w.close()


async def test_connections_are_spread_round_robin(engine: str) -> None:
    def named(name: bytes) -> Handler:
        async def h(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(name)
            await w.drain()
        return h

    async with tcp_server(named(b"a")) as pa, tcp_server(named(b"b")) as pb, \
            running_proxy(tcp_config(pa, pb)) as p:
        names = []
        for _ in range(4):
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            names.append(await asyncio.wait_for(r.read(), 10))
            w.close()
        assert sorted(names) == [b"a", b"a", b"b", b"b"]
        assert names[0] != names[1]


async def test_connect_refused_closes_the_client_and_is_counted(engine: str) -> None:
    dead = free_port()
    async with running_proxy(tcp_config(dead)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        w.write(b"hello?")
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_upstream_connect_failures_total", cluster="backend") == 1
        await until(lambda: not p.server.listeners["out"].connections)


async def test_connect_timeout_closes_the_client(engine: str) -> None:
    # A listener that never accepts, with its accept queue full: further SYNs are dropped, so
    # connecting hangs until the cluster's connect timeout.
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for f in fillers:
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(stuck.getsockname())
        try:
            cfg = tcp_config(stuck.getsockname()[1], connect_timeout_ms=200)
            async with running_proxy(cfg) as p:
                r, w = await asyncio.open_connection("127.0.0.1", p.port())
                assert await closed_by_peer(r)
                w.close()
                assert p.metric("tulle_proxy_upstream_connect_failures_total") == 1
        finally:
            for f in fillers:
                f.close()


async def test_a_reset_from_the_server_resets_the_client(engine: str) -> None:
    async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(5)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        w.transport.abort()

    async with tcp_server(reset) as port, running_proxy(tcp_config(port)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        w.write(b"hello")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 5)
        w.close()
        await until(lambda: not p.server.listeners["out"].connections)


async def test_proxy_close_aborts_relays(engine: str) -> None:
    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    async with tcp_server(hold) as port:
        async with running_proxy(tcp_config(port)) as p:
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            w.write(b"x")
            await until_metric(p, "tulle_proxy_tcp_connections_total", 1)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 5)
        w.close()


IDLE = {"tcp_idle_timeout_ms": 300, "header_timeout_ms": 200}
"""A 300 ms relay idle timeout; the deadline sweeper then ticks every 50 ms."""


async def test_an_idle_relay_is_closed_on_both_sides_and_counted(engine: str) -> None:
    upstream_saw_eof = asyncio.Event()

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi")
        if await r.read() == b"x":  # one byte, then nothing: the relay is idle
            assert await r.read() == b""
        upstream_saw_eof.set()

    async with tcp_server(hold) as port, running_proxy(tcp_config(port, settings=IDLE)) as p:
        loop = asyncio.get_running_loop()
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        w.write(b"x")
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"hi"
        start = loop.time()
        assert await asyncio.wait_for(r.read(), 5) == b""  # FIN: closed, not reset
        idle_for = loop.time() - start
        await asyncio.wait_for(upstream_saw_eof.wait(), 5)
        w.close()
        assert 0.25 <= idle_for < 2.0
        assert p.metric("tulle_proxy_tcp_idle_timeouts_total", listener="out",
                        cluster="backend") == 1
        await until(lambda: not p.server.listeners["out"].connections)
        assert p.metric("tulle_proxy_upstream_connections_active") == 0


async def test_a_relay_that_keeps_moving_bytes_is_not_idle(engine: str) -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(100):
            w.write(data)

    async with tcp_server(echo) as port, running_proxy(tcp_config(port, settings=IDLE)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        for i in range(8):  # 8 x 100 ms: well past the 300 ms idle timeout in total
            w.write(b"%d" % i)
            assert await asyncio.wait_for(r.readexactly(1), 5) == b"%d" % i
            await asyncio.sleep(0.1)
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        assert p.metric("tulle_proxy_tcp_idle_timeouts_total") == 0


async def test_zero_disables_the_relay_idle_timeout(engine: str) -> None:
    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    cfg = tcp_config(settings={"tcp_idle_timeout_ms": 0, "header_timeout_ms": 40})
    async with tcp_server(hold) as port:
        cfg["clusters"][0]["endpoints"] = [{"address": "127.0.0.1", "port": port}]
        async with running_proxy(cfg) as p:
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            w.write(b"x")
            await until_metric(p, "tulle_proxy_tcp_connections_total", 1)
            (relay,) = p.server.listeners["out"].connections
            assert relay.deadline == 0.0  # nothing for the sweeper to look at
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.read(1), 0.3)
            w.close()
            assert p.metric("tulle_proxy_tcp_idle_timeouts_total") == 0


async def closed_by_peer(r: asyncio.StreamReader) -> bool:
    """The proxy closed this client without sending anything: EOF, or a reset when the close
    found unread bytes from us in its socket (the kernel's choice, not the proxy's)."""
    try:
        return await asyncio.wait_for(r.read(), 5) == b""
    except ConnectionResetError:
        return True


async def until(cond: Callable[[], bool], limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def until_metric(p: RunningProxy, name: str, value: float) -> None:
    await until(lambda: p.metric(name) == value)


@pytest.mark.parametrize("where", ["dup", "pipe"])
async def test_out_of_descriptors_in_the_relay_closes_both_sides_and_releases_the_slot(
        engine: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE while the splice relay takes the client's socket (`os.dup`) or makes its pipes
    (after the upstream connected) -- what happens exactly when descriptors run short -- must
    close the client and the upstream and give the connection's slot back: a relay left
    registered counts against the listener's cap (and the process's) forever."""
    if engine == "copy":
        pytest.skip("the copy relay neither duplicates the socket nor makes pipes")
    upstream_closed = asyncio.Event()

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await r.read()
        upstream_closed.set()  # EOF or reset: the proxy let go of it

    def emfile(*_: object) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    if where == "dup":
        monkeypatch.setattr(splice.os, "dup", emfile)
    else:
        monkeypatch.setattr(splice, "_new_pipe", emfile)
    async with tcp_server(hold) as port:
        cfg = tcp_config(port)
        cfg["listeners"][0]["max_connections"] = 1
        async with running_proxy(cfg) as p:
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            w.write(b"hello")
            assert await closed_by_peer(r)
            w.close()
            if where == "pipe":
                await asyncio.wait_for(upstream_closed.wait(), 5)
            await until(lambda: not p.server.listeners["out"].connections)
            assert p.metric("tulle_proxy_downstream_connections_active") == 0
            monkeypatch.undo()
            # The slot is free: the next client (cap 1) is relayed, not reset.
            r, w = await asyncio.open_connection("127.0.0.1", p.port())
            w.write(b"again")
            await until_metric(p, "tulle_proxy_tcp_connections_total", 2 if where == "pipe" else 1)
            w.close()
