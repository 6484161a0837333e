"""Real HTTP/2 peers for tests, built on the `h2` state machine: an h2c origin and a client.

The origin (prior knowledge, no TLS) serves:

    /echo        JSON: method, path, authority, headers, body length
    /bytes/N     N bytes of body, sent within the client's flow-control windows
    /sink        reads the whole body; JSON with its length and sha256
    /trailers    a small body, then trailers `x-checksum` and `grpc-status: 0`
    /reset       a 200 head and 1 KiB, then RST_STREAM(INTERNAL_ERROR)
    /hold        like /sink, but acknowledges no request DATA until `origin.release` is set
    /stream/N    N pieces of 16 KiB, one per event-loop turn (for mid-response resets)
    /script      one entry of `origin.script` per request (then "ok"): "ok" a gRPC OK answer
                 (a 5-byte message, trailers `grpc-status: 0`), "grpc-N" a trailers-only gRPC
                 answer with status N, "after-N" a 5-byte message, then trailers with status N,
                 "refuse" RST_STREAM(REFUSED_STREAM) before any answer,
                 "503" a 503 with a 5-byte body

`origin.goaway_connections = K` makes each of the next K connections answer its first request
with GOAWAY(last_stream_id=0) and close, so the request was provably not processed.

The client speaks h2c with prior knowledge and honours flow control when sending bodies; each
request returns status, headers, body, trailers, or the RST_STREAM code that ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

Headers = list[tuple[bytes, bytes]]


# -- origin ---------------------------------------------------------------------------------

class _Req:
    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        self.pseudo = {n: v for n, v in headers if n.startswith(b":")}
        self.body = hashlib.sha256()
        self.length = 0
        self.unacked = 0


class H2Origin:
    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.goaway_connections = 0
        self.release = asyncio.Event()
        self.held_bytes = 0
        self.resets_received = 0
        self.reset_seen = asyncio.Event()
        self.script: list[str] = []
        self.scripted = 0
        """Requests `/script` received."""


class _OriginConn(asyncio.Protocol):
    def __init__(self, origin: H2Origin) -> None:
        self.origin = origin
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.reqs: dict[int, _Req] = {}
        self.window_open = asyncio.Event()
        self.goaway_first = False
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.origin.connections += 1
        if self.origin.goaway_connections > 0:
            self.origin.goaway_connections -= 1
            self.goaway_first = True
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.window_open.set()
        for t in self.tasks:
            t.cancel()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                if self.goaway_first:
                    self.conn.close_connection(0, last_stream_id=0)
                    self.flush()
                    assert self.transport is not None
                    self.transport.close()
                    return
                self.origin.requests += 1
                self.reqs[ev.stream_id] = _Req(list(ev.headers))
                path = self.reqs[ev.stream_id].pseudo[b":path"]
                if path.startswith((b"/bytes/", b"/reset", b"/stream/", b"/trailers")):
                    self._spawn(self._respond(ev.stream_id))
            elif isinstance(ev, h2.events.DataReceived):
                r = self.reqs.get(ev.stream_id)
                if r is not None:
                    r.body.update(ev.data)
                    r.length += len(ev.data)
                    if r.pseudo[b":path"] == b"/hold" and not self.origin.release.is_set():
                        r.unacked += ev.flow_controlled_length
                        self.origin.held_bytes += ev.flow_controlled_length
                        if r.unacked == ev.flow_controlled_length:
                            self._spawn(self._ack_later(ev.stream_id))
                        continue
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                r = self.reqs.get(ev.stream_id)
                if r is not None and not r.pseudo[b":path"].startswith(
                        (b"/bytes/", b"/reset", b"/stream/", b"/trailers")):
                    self._spawn(self._respond(ev.stream_id))
            elif isinstance(ev, h2.events.StreamReset):
                self.origin.resets_received += 1
                self.origin.reset_seen.set()
                self.reqs.pop(ev.stream_id, None)
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self.window_open.set()
        self.flush()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _ack_later(self, sid: int) -> None:
        await self.origin.release.wait()
        r = self.reqs.get(sid)
        if r is not None and r.unacked:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(r.unacked, sid)
            r.unacked = 0
            self.flush()

    async def _send_body(self, sid: int, body: bytes, end: bool) -> None:
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                if self.transport is None:
                    return
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(sid, bytes(chunk), end_stream=end and not view)
            self.flush()
            await asyncio.sleep(0)
        if end and not body:
            self.conn.end_stream(sid)
            self.flush()

    async def _respond(self, sid: int) -> None:
        r = self.reqs[sid]
        path = r.pseudo[b":path"].decode()
        try:
            if path.startswith("/bytes/"):
                n = int(path[7:])
                self.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % n)])
                await self._send_body(sid, b"x" * n, True)
            elif path == "/trailers":
                self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
                await self._send_body(sid, b"hello trailers", False)
                self.conn.send_headers(sid, [(b"x-checksum", b"abc123"), (b"grpc-status", b"0")],
                                       end_stream=True)
            elif path == "/reset":
                self.conn.send_headers(sid, [(b":status", b"200")])
                await self._send_body(sid, b"r" * 1024, False)
                self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            elif path == "/script":
                self.origin.scripted += 1
                action = self.origin.script.pop(0) if self.origin.script else "ok"
                grpc = [(b":status", b"200"), (b"content-type", b"application/grpc")]
                if action == "refuse":
                    self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                elif action == "503":  # a plain HTTP error with a body (a retried status)
                    self.conn.send_headers(sid, [(b":status", b"503"),
                                                 (b"content-length", b"5")])
                    await self._send_body(sid, b"busy\n", True)
                elif action.startswith("grpc-"):
                    self.conn.send_headers(sid, [*grpc, (b"grpc-status", action[5:].encode())],
                                           end_stream=True)
                else:  # "ok", or "after-N": a message, then trailers with status N
                    status = action[6:].encode() if action.startswith("after-") else b"0"
                    self.conn.send_headers(sid, grpc)
                    await self._send_body(sid, b"\x00\x00\x00\x00\x00", False)
                    self.conn.send_headers(sid, [(b"grpc-status", status)], end_stream=True)
            elif path.startswith("/stream/"):
                self.conn.send_headers(sid, [(b":status", b"200")])
                for _ in range(int(path[8:])):
                    if sid not in self.reqs:
                        return
                    await self._send_body(sid, b"s" * 16384, False)
                self.conn.end_stream(sid)
            else:
                if path in ("/sink", "/hold"):
                    payload: dict[str, Any] = {"len": r.length, "sha256": r.body.hexdigest()}
                else:
                    payload = {
                        "method": r.pseudo[b":method"].decode(), "path": path,
                        "authority": r.pseudo.get(b":authority", b"").decode(),
                        "scheme": r.pseudo.get(b":scheme", b"").decode(),
                        "headers": {n.decode(): v.decode() for n, v in r.headers
                                    if not n.startswith(b":")},
                        "body_len": r.length}
                body = json.dumps(payload).encode()
                self.conn.send_headers(sid, [(b":status", b"200"),
                                             (b"content-type", b"application/json"),
                                             (b"content-length", b"%d" % len(body))])
                await self._send_body(sid, body, True)
        except h2.exceptions.StreamClosedError:
            return
        finally:
            self.flush()


@contextlib.asynccontextmanager
async def running_h2_origin() -> AsyncIterator[tuple[int, H2Origin]]:
    origin = H2Origin()
    loop = asyncio.get_running_loop()
    conns: list[_OriginConn] = []

    def factory() -> _OriginConn:
        c = _OriginConn(origin)
        conns.append(c)
        return c

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), origin
    finally:
        server.close()
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
            for t in list(c.tasks):
                t.cancel()
        await asyncio.sleep(0)


class _KeepOpenOnGoAway(h2.connection.H2ConnectionStateMachine):
    """A real client finishes its streams after a graceful GOAWAY; h2 alone would stop reading
    (python-hyper/h2#1181)."""

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if (input_ is h2.connection.ConnectionInputs.RECV_GOAWAY
                and self.state is not h2.connection.ConnectionState.CLOSED):
            return []
        return super().process_input(input_)


# -- client ---------------------------------------------------------------------------------

@dataclass
class H2Response:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers = field(default_factory=list)
    reset_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    head: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def json(self) -> Any:
        return json.loads(bytes(self.body))


class H2Client(asyncio.Protocol):
    """A small h2c client: `await H2Client.connect(port)`, then `await c.request(...)`."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.state_machine = _KeepOpenOnGoAway()
        self.transport: asyncio.Transport | None = None
        self.responses: dict[int, H2Response] = {}
        self.window_open = asyncio.Event()
        self.closed = asyncio.Event()
        self.goaway: int | None = None
        self.sent: dict[int, int] = {}
        """Body bytes handed to the connection, per stream."""

    @classmethod
    async def connect(cls, port: int) -> H2Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, "127.0.0.1", port)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closed.set()
        self.window_open.set()
        for r in self.responses.values():
            r.head.set()
            r.done.set()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            r = self.responses.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                r.headers = list(ev.headers)
                r.status = int(dict(r.headers)[b":status"])
                r.head.set()
            elif isinstance(ev, h2.events.DataReceived) and r is not None:
                r.body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived) and r is not None:
                r.trailers = list(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r.done.set()
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r.reset_code = int(ev.error_code)
                r.head.set()
                r.done.set()
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self.window_open.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = int(ev.error_code)
        self.flush()

    def start(self, method: str, path: str, headers: Headers = (),  # type: ignore[assignment]
              end_stream: bool = True, authority: str = "example.test") -> tuple[int, H2Response]:
        sid = self.conn.get_next_available_stream_id()
        r = self.responses[sid] = H2Response()
        self.conn.send_headers(sid, [(b":method", method.encode()), (b":scheme", b"http"),
                                     (b":authority", authority.encode()),
                                     (b":path", path.encode()), *headers],
                               end_stream=end_stream)
        self.flush()
        return sid, r

    async def send_body(self, sid: int, body: bytes, end: bool = True,
                        trailers: Headers | None = None) -> None:
        view = memoryview(body)
        while view:
            if self.transport is None or self.responses[sid].done.is_set():
                return
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(sid, bytes(chunk), end_stream=end and not view and not trailers)
            self.sent[sid] = self.sent.get(sid, 0) + len(chunk)
            self.flush()
            await asyncio.sleep(0)
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
            self.flush()
        elif end and not body:
            self.conn.end_stream(sid)
            self.flush()

    async def request(self, method: str, path: str, headers: Headers = (),  # type: ignore[assignment]
                      body: bytes = b"", trailers: Headers | None = None,
                      authority: str = "example.test") -> H2Response:
        sid, r = self.start(method, path, headers, end_stream=not body and not trailers,
                            authority=authority)
        if body or trailers:
            await self.send_body(sid, body, trailers=trailers)
        await r.done.wait()
        return r

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
