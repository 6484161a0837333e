"""HTTP/2 driver, fake transports: request body that arrives before the upstream exists is held
and its window withheld until it went upstream (issue 7: it used to be acknowledged and
dropped unless a filter held the head).

The real `H2Downstream` and an `H1Connection` upstream run on in-memory transports; the client
is frames built by hand (`tests/support/h2raw.py`).  A filter stops the request head; the body
sent meanwhile must reach the origin whole once the filter resumes, and the client's stream
window must reopen only then.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hpack import Encoder
from tests.support.h2raw import END_HEADERS, HEADERS, PREFACE, WINDOW_UPDATE, data, frame, request
from tests.support.h2raw import settings as settings_frame
from tests.support.listener import listener_handle
from tests.support.transport import FakeTransport

from tulle.dataplane.http.filter import STOP, FilterStream, HttpFilter
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http2 import H2Downstream
from tulle.dataplane.routing import router as router_mod
from tulle.dataplane.upstream.http1 import H1Connection, H1Pool
from tulle.proxyconfig import validate


class Hold(HttpFilter):
    __slots__ = ("streams",)

    def __init__(self) -> None:
        self.streams: list[FilterStream] = []

    def on_request_head(self, stream: FilterStream) -> int:
        self.streams.append(stream)
        return STOP


class HoldFactory:
    name = "authz"
    stateless = True
    filter_type = Hold

    def __init__(self, f: Hold) -> None:
        self.f = f

    def create(self) -> HttpFilter:
        return self.f


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hold]:
    f = Hold()
    monkeypatch.setattr(router_mod, "factory_for", lambda cfg, *_: HoldFactory(f))
    yield f


def build() -> tuple[ListenerHandle, H1Pool]:
    cfg = validate({
        "listeners": [{"name": "l", "port": 18080, "protocol": "http2", "route_table": "rt"}],
        "clusters": [{"name": "origin", "endpoints": [{"address": "127.0.0.1", "port": 18081}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "domains": ["*"],
            "rules": [{"backends": [{"cluster": "origin"}], "filters": [
                {"type": "RequestHeaderModifier", "set": [{"name": "x-a", "value": "1"}]}]}]}]}],
    })
    handle = listener_handle(cfg)
    cluster = handle.ctx.clusters["origin"]
    pool = cluster.pool_for(cluster.endpoints[0])
    assert isinstance(pool, H1Pool)
    return handle, pool


def window_updates(out: bytes, sid: int) -> int:
    """The window the server reopened for stream `sid` in `out` (its frames after SETTINGS).
    The engine batches small acknowledgements, so only "none yet" is a reliable reading."""
    total, i = 0, 0
    while i + 9 <= len(out):
        length = int.from_bytes(out[i:i + 3], "big")
        typ, stream = out[i + 3], struct.unpack(">I", out[i + 5:i + 9])[0] & 0x7FFFFFFF
        if typ == WINDOW_UPDATE and stream == sid:
            total += struct.unpack(">I", out[i + 9:i + 13])[0] & 0x7FFFFFFF
        i += 9 + length
    return total


async def turn() -> None:
    for _ in range(3):  # the driver writes once per loop turn (`write_soon`)
        await asyncio.sleep(0)


async def test_body_held_while_the_head_is_stopped_reopens_its_window_only_when_sent(
        hold: Hold) -> None:
    handle, pool = build()
    up = H1Connection(pool)
    up_t = FakeTransport()
    up_t.protocol = up
    up.connection_made(up_t)  # type: ignore[arg-type]
    pool.idle.append(up)

    down = H2Downstream(handle)
    t = FakeTransport()
    t.protocol = down
    down.connection_made(t)  # type: ignore[arg-type]
    head = Encoder().encode(request("POST", "/up", extra=[(b"content-length", b"3000")]))
    down.data_received(PREFACE + settings_frame() + frame(HEADERS, END_HEADERS, 1, head))
    body = b"0123456789" * 100
    down.data_received(data(1, body) + data(1, body))
    await turn()
    assert len(hold.streams) == 1 and up_t.out == b""
    ex = down.exchanges[1]
    assert ex.unacked == 2000 and ex.body_size == 2000  # held, not acknowledged (nor dropped)
    assert window_updates(t.take(), 1) == 0

    down.data_received(data(1, body, end=True))
    hold.streams[0].resume()
    await turn()
    sent: Any = bytes(up_t.out)
    assert sent.startswith(b"POST /up HTTP/1.1\r\n") and b"content-length: 3000\r\n" in sent
    assert sent.endswith(b"\r\n\r\n" + body * 3)
    assert ex.unacked == 0 and ex.body is None  # acknowledged once the upstream took it

    up.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await turn()
    assert b"ok" in t.take()
    assert handle.ctx.stats("origin").duration.count == 1
    t.close()
    up_t.close()
