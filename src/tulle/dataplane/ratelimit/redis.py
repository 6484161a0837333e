"""A small asyncio Redis (RESP2) client: just what the global rate limit needs.

Why our own (ADR 0041): the limit sends one pipelined `SET ... NX`, `INCR`, `PTTL` per request
and reads their replies back.  The `redis` package would bring its connection pool, retry and parser
layers and a few MB of RSS into a proxy whose budget is 40 MB; this is one connection, one
`asyncio.Protocol`, replies matched to requests in order (Redis answers a connection's
commands in the order it got them).

Never blocking a request: `call` returns a future at once.  While a connection is being made,
commands wait in a bounded queue; after a failure (refused, reset, a reply that does not
parse) the client stays *down* for `retry_interval` seconds, during which every call fails at
once, so a dead Redis costs a request nothing, not even the caller's timeout.  How long a
request waits for an answer is the caller's (`filters/ratelimit.py` bounds it).  A command
whose caller gave up is still answered by Redis; its reply is read and dropped in order.  A
connection that owes replies and has said nothing for `STALL_INTERVAL` is given up like a
broken one (ADR 0103).

Credentials and TLS: with a `password_file`, each new connection first sends `AUTH [user]
password` (the file is read then, so a rotated password is used from the next connection on;
it is never logged, and a refused AUTH takes the client down like a refused connection). With
an `ssl` context the connection is TLS, the server verified by its certificate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections import deque
from typing import cast

log = logging.getLogger("tulle.ratelimit")

MAX_PENDING = 4096
"""Commands awaiting replies (or a connection) at most; past it calls fail at once."""
MAX_PASSWORD_BYTES = 1024
STALL_INTERVAL = 1.0
"""Seconds a connection may leave commands unanswered before it is given up (ADR 0103).
Redis answers in microseconds, and every caller has stopped waiting by then (a limit's
`timeout_ms` is at most 1 s); a connection lost without a reset (a failed-over address, a
firewall that forgot it) would otherwise be kept until the kernel gives up on it, ~15 min of
retransmissions during which every call fails."""


class RedisError(Exception):
    """Redis is unreachable, the connection broke, or it answered with an error."""


DOWN = RedisError("redis unavailable")


def encode(*args: bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class ReplyParser:
    """Bytes in, replies out (integers, simple strings, errors, bulk strings, nil; arrays are
    not needed and are refused).  Sans-I/O."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[int | bytes | RedisError | None]:
        self.buf += data
        out: list[int | bytes | RedisError | None] = []
        buf = self.buf
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
            if kind == b":":
                out.append(int(line))
            elif kind == b"+":
                out.append(line)
            elif kind == b"-":
                out.append(RedisError(line.decode("utf-8", "replace")[:200]))
            elif kind == b"$":
                n = int(line)
                if n < 0:
                    out.append(None)
                else:
                    if len(buf) < end + 2 + n + 2:
                        break
                    out.append(bytes(buf[end + 2:end + 2 + n]))
                    end = end + 2 + n
            else:
                raise ValueError(f"unexpected RESP reply type {kind!r}")
            pos = end + 2
        del buf[:pos]
        if len(buf) > 1 << 20:
            raise ValueError("RESP reply too large")
        return out


class _Conn(asyncio.Protocol):
    """Holds its client weakly: a client nobody uses any more (its snapshot was replaced) is
    collected, and closes the connection as it goes (`RedisClient.__del__`)."""

    def __init__(self, client: RedisClient) -> None:
        self.client = weakref.ref(client)
        self.parser = ReplyParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        client = self.client()
        if client is None:
            return
        try:
            replies = self.parser.feed(data)
        except ValueError:
            client.failed(self)
            return
        client.replies(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client()
        if client is not None:
            client.failed(self)


class RedisClient:
    """One connection to `host:port`, made on first use and again after `retry_interval`."""

    __slots__ = (
        "__weakref__",
        "ca_file",
        "conn",
        "connect_timeout",
        "connecting",
        "down_until",
        "heard",
        "host",
        "loop",
        "password_file",
        "port",
        "queued",
        "retry_interval",
        "server_name",
        "ssl",
        "stall_interval",
        "username",
        "waiting",
    )

    def __init__(self, host: str, port: int, *, connect_timeout: float = 0.5,
                 retry_interval: float = 0.5, username: str = "", password_file: str = "",
                 tls: bool = False, ca_file: str = "", server_name: str = "") -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password_file = password_file
        self.ssl: ssl.SSLContext | bool = tls
        """False: plaintext; True: TLS, its context made at the first connection (reading
        `ca_file`); then the context."""
        self.ca_file = ca_file
        self.server_name = server_name or host
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self.loop: asyncio.AbstractEventLoop | None = None
        self.conn: _Conn | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.down_until = 0.0
        self.stall_interval = STALL_INTERVAL
        self.heard = 0.0
        """Loop time of the last replies read, or of the first command sent since every
        earlier one was answered: how long the connection has been silent while owing."""
        self.waiting: deque[asyncio.Future[int | bytes | None]] = deque()
        """Futures of commands sent (or queued), in order, one per command."""
        self.queued: list[bytes] = []
        """Commands waiting for the connection."""

    def call(self, *commands: bytes) -> list[asyncio.Future[int | bytes | None]]:
        """Send encoded `commands` in one write (a pipeline); one future per command.  They
        fail with `RedisError` when Redis is down or the connection breaks."""
        loop = self.loop = self.loop or asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        now = loop.time()
        if not self.waiting:
            self.heard = now
        elif now - self.heard > self.stall_interval and self.conn is not None:
            log.warning("redis %s:%d: no reply for %.1f s; reconnecting", self.host, self.port,
                        now - self.heard)
            self.failed(self.conn)  # down for `retry_interval`, then a new connection
        if now < self.down_until or len(self.waiting) + len(commands) > MAX_PENDING:
            for f in futures:
                f.set_exception(DOWN)
            return futures
        self.waiting.extend(futures)
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.write(b"".join(commands))
        else:
            self.queued.extend(commands)
            if self.connecting is None:
                self.connecting = loop.create_task(self._connect())
        return futures

    async def _connect(self) -> None:
        loop = self.loop
        assert loop is not None
        conn = _Conn(self)
        if self.ssl is True:
            try:
                self.ssl = ssl.create_default_context(cafile=self.ca_file or None)
            except (OSError, ValueError) as exc:
                log.warning("redis %s:%d: cannot use tls.ca_file %s: %s", self.host, self.port,
                            self.ca_file, getattr(exc, "strerror", None) or exc)
                self.connecting = None
                self.failed(None)
                return
        context = self.ssl if isinstance(self.ssl, ssl.SSLContext) else None
        auth = b""
        if self.password_file:
            try:
                auth = self._auth_command()
            except (OSError, ValueError) as exc:
                log.warning("redis %s:%d: cannot read password_file %s: %s", self.host,
                            self.port, self.password_file, getattr(exc, "strerror", exc))
                self.connecting = None
                self.failed(None)
                return
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: conn, self.host, self.port, ssl=context,
                server_hostname=self.server_name if context is not None else None),
                self.connect_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            if isinstance(exc, ssl.SSLError):
                log.warning("redis %s:%d: TLS failed: %s", self.host, self.port, exc.reason)
            self.connecting = None
            self.failed(None)
            return
        self.connecting = None
        self.conn = conn
        if auth:
            checked = loop.create_future()
            checked.add_done_callback(lambda f: self._authenticated(f, conn))
            self.waiting.appendleft(checked)  # AUTH's reply comes before every other one
        if (self.queued or auth) and conn.transport is not None:
            conn.transport.write(auth + b"".join(self.queued))
        self.queued = []

    def _auth_command(self) -> bytes:
        with open(self.password_file, "rb") as f:
            secret = f.read(MAX_PASSWORD_BYTES + 1)
        secret = secret.rstrip(b"\r\n")
        if not secret or len(secret) > MAX_PASSWORD_BYTES:
            raise ValueError(f"empty or longer than {MAX_PASSWORD_BYTES} bytes")
        if self.username:
            return encode(b"AUTH", self.username.encode(), secret)
        return encode(b"AUTH", secret)

    def _authenticated(self, f: asyncio.Future[int | bytes | None], conn: _Conn) -> None:
        if f.cancelled() or f.exception() in (None, DOWN):
            return  # (DOWN: the connection went first; `failed` said so)
        # The error Redis gives (WRONGPASS, NOAUTH...) never contains the password.
        log.warning("redis %s:%d: AUTH refused: %s", self.host, self.port, f.exception())
        self.failed(conn)

    def replies(self, replies: list[int | bytes | RedisError | None]) -> None:
        if replies and self.loop is not None:
            self.heard = self.loop.time()
        waiting = self.waiting
        for r in replies:
            if not waiting:
                break
            f = waiting.popleft()
            if f.done():
                continue  # the caller gave up; the reply is dropped in order
            if isinstance(r, RedisError):
                f.set_exception(r)
            else:
                f.set_result(r)

    def failed(self, conn: _Conn | None) -> None:
        """The connection (or the attempt to make one) failed: every waiting command fails,
        and the client is down for `retry_interval`."""
        if conn is not None and conn is not self.conn:
            return
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.abort()
        self.conn = None
        self.queued = []
        loop = self.loop
        if loop is not None:
            self.down_until = loop.time() + self.retry_interval
        waiting, self.waiting = self.waiting, deque()
        for f in waiting:
            if not f.done():
                f.set_exception(DOWN)
                f.exception()  # retrieved: a caller that gave up logs nothing

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn, self.conn = self.conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    def __del__(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
