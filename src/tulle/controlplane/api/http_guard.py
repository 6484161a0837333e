"""The API port's own bounds on connections, request heads and request bodies.

uvicorn's httptools protocol (what the REST API runs on) bounds none of them: it appends
every URL and header fragment it is given (an anonymous 48 MB URL grew the control plane by
115 MB, ADR 0102), keeps a connection that never finishes its head for ever (its keep-alive
timer starts only after a response, and any byte cancels it), and takes every connection the
kernel hands it -- from the same descriptor table the proxy stream needs.  All of this
happens before a request exists, so the token check (`auth.py`) and the body limit
(`limits.py`) never see it.

`GuardedHttpProtocol` is uvicorn's protocol with four bounds:

* a request head (request line and headers) of more than `max_head_bytes` is answered 431
  and the connection closed;
* a head must be complete `head_timeout` seconds after the connection opened (or after the
  first byte of the next request on a kept-alive one), else 408 and close -- a deadline,
  not an idle timer, so a byte every second does not keep it alive;
* a request body must be complete `body_timeout` seconds after its head, else 408 (to a
  request still waiting for its body) and close;
* at most `max_connections` connections are open; one more is closed at once.  The default is
  a quarter of the soft RLIMIT_NOFILE (`push/limits.py` leaves the stream half), so an API
  flood cannot take the descriptors proxies and the store need.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tulle.controlplane.push.limits import soft_fd_limit

log = logging.getLogger("tulle.controlplane.api")

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
"""Request line plus headers; a token is 76 bytes, the longest URL `tulle` sends ~2 KB."""
DEFAULT_HEAD_TIMEOUT = 10.0
"""Seconds from a connection (or a kept-alive request's first byte) to a complete head."""
DEFAULT_BODY_TIMEOUT = 60.0
"""Seconds from a complete head to a complete body: 16 MiB (the body limit) at ~280 KB/s."""
API_FD_SHARE = 0.25
"""The API's connections take at most this share of the soft RLIMIT_NOFILE."""
DEFAULT_MAX_CONNECTIONS = 4096
"""Open API connections when the descriptor limit allows more."""


@dataclass(frozen=True, slots=True)
class Guard:
    """The bounds one API server holds every connection to (0 or less: that bound is off)."""

    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def connection_cap(self, fd_limit: int | None = None) -> int:
        """`max_connections`, held to `API_FD_SHARE` of the soft descriptor limit."""
        limit = soft_fd_limit() if fd_limit is None else fd_limit
        cap = self.max_connections
        if limit:
            share = max(1, int(limit * API_FD_SHARE))
            cap = min(cap, share) if cap > 0 else share
        return cap


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


LINGER_QUIET = 0.5
"""A refused connection is closed once nothing arrived for this many seconds ..."""
LINGER_MAX = 5.0
"""... or this many seconds after the refusal, whichever is first."""
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two warnings about connections refused over the cap (each gives a count)."""
_refusals = {"count": 0, "at": -REFUSAL_LOG_INTERVAL}


def _refused_connection(loop: asyncio.AbstractEventLoop, cap: int) -> None:
    """Count a connection refused over the cap; warn at most every REFUSAL_LOG_INTERVAL (a
    flood of connections must not become a flood of log lines)."""
    _refusals["count"] += 1
    now = loop.time()
    if now - _refusals["at"] >= REFUSAL_LOG_INTERVAL:
        log.warning("API: %d connection(s) closed at once: %d are open, the most allowed "
                    "(a quarter of the descriptor limit at most)",
                    _refusals["count"], cap)
        _refusals["count"], _refusals["at"] = 0, now


def guarded_protocol(guard: Guard) -> type[HttpToolsProtocol]:
    """uvicorn's protocol class for `uvicorn.Config(http=...)`, holding `guard`."""
    cap = guard.connection_cap()

    class Guarded(GuardedHttpProtocol):
        pass

    Guarded.guard = guard
    Guarded.cap = cap
    return Guarded


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of `guard` (see the module docstring).

    Only uvicorn's own hooks are extended (each calls the original), so the request cycle,
    flow control and keep-alive are uvicorn's."""

    guard: Guard = Guard()
    cap: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._tail = b""
        self._in_head = True
        self._answered = False
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if self.cap > 0 and len(self.connections) > self.cap:
            _refused_connection(self.loop, self.cap)
            transport.abort()
            return
        self._arm(self.guard.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # A request whose handler already answered (and only its body is late) just closes.
        if self._in_head or self.cycle is None or not self.cycle.response_started:
            self._refuse(408, "request not received in time")
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with the API's error shape and close."""
        if self._answered or self.transport.is_closing():
            return
        self._answered = True
        body = b'{"error": "' + message.encode() + b'", "details": []}'
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        # Close a moment later, reading and dropping what still arrives meanwhile: closing
        # with unread bytes makes the kernel send a reset, which a client still sending
        # takes before it reads the answer.
        self._linger_until = self.loop.time() + LINGER_MAX
        self._arm_linger()

    def _arm_linger(self) -> None:
        self._disarm()
        wait = min(LINGER_QUIET, self._linger_until - self.loop.time())
        if wait <= 0:
            self.transport.close()
        else:
            self._deadline = self.loop.call_later(wait, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        if not self._answered:
            super().send_400_response(msg)

    def _count_head(self, data: bytes) -> bool:
        """Count the bytes of `data` that belong to the head being received; False (and
        431) past the bound.  Counted from the raw bytes, not the parser's callbacks:
        httptools hands a header over only once it is complete, holding a value of any size
        until then.  A kept-alive connection's next head is counted from the read after its
        first byte, so the bound holds to within one read (256 KiB)."""
        limit = self.guard.max_head_bytes
        if limit <= 0:
            return True
        seen = self._tail + data
        end = seen.find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
        self._tail = seen[-3:]
        if self._head_bytes > limit:
            self._refuse(431, f"request head larger than {limit} bytes")
            return False
        return True

    # httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._tail = b""
        self._in_head = True
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.guard.head_timeout)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.guard.body_timeout)
        # A long answer (a watch) whose caller stopped reading closes the connection with
        # this: an ASGI app has no other way to, short of an error uvicorn logs as one.
        self.scope["tulle.abort"] = self.transport.abort  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._answered:  # refused: drop what still arrives, close once it stops
            if not self.transport.is_closing():
                self._arm_linger()
            return
        if self._in_head and not self._count_head(data):
            return
        super().data_received(data)


__all__ = ["API_FD_SHARE", "DEFAULT_BODY_TIMEOUT", "DEFAULT_HEAD_TIMEOUT",
           "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_HEAD_BYTES", "Guard", "GuardedHttpProtocol",
           "guarded_protocol"]
