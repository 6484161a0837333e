"""A batching OTLP/HTTP (protobuf) poster, generic over the signal: `/v1/logs`, `/v1/traces`.

Why this shape: whoever produces records (the access log's `on_done`, a span's end) runs on
the request path and must never wait for a collector.  `offer()` appends to a bounded queue
and returns at once; when the queue is full the record is dropped and counted, the request
goes on.  A background task takes batches off the queue (when `max_batch` records wait, or
every `flush_interval` seconds), encodes them with the signal's `encode` function and POSTs
them (OTLP/HTTP, `Content-Type: application/x-protobuf`) over one kept-alive connection.

Failures, per the OTLP/HTTP spec: 429, 502, 503 and 504 and transport errors (refused,
reset, timeout) are retried with exponential backoff and jitter (honouring `Retry-After`,
capped at `backoff_max`), at most `max_retries` times, then the batch is dropped and
counted; any other status drops the batch at once.  Each POST has a `timeout` for the
whole exchange.  A response is read within bounds (`MAX_HEAD`, `MAX_BODY`): a collector,
or something pretending to be one, cannot make the proxy hold more than that, and its body
is decoded only for the `partial_success` rejected count.  Request headers given by the
configuration (an API key) are sent, never logged or kept in an error text.

Counters (`ExportStats`) are plain attributes for the admin/metrics page: offered, dropped
(queue full), exported, rejected (partial success), failed (dropped after the retries or a
permanent error), batches, retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from tulle.dataplane.telemetry.otlp.wire import LEN, VARINT, fields

log = logging.getLogger("tulle.telemetry.otlp")

T = TypeVar("T")

MAX_HEAD = 16 * 1024
"""Bytes of a response's status line and headers read at most."""
MAX_BODY = 64 * 1024
"""Bytes of a response body read at most (an export response is a few bytes)."""
RETRYABLE = frozenset({429, 502, 503, 504})
"""Statuses OTLP/HTTP says to retry."""


class ExportError(Exception):
    """One POST failed; `retryable` says whether the same batch may be sent again."""

    def __init__(self, reason: str, retryable: bool, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.retry_after = retry_after


class ExportStats:
    """What the exporter did, for the proxy's metrics (counts of records unless said)."""

    __slots__ = ("batches", "dropped", "exported", "failed", "offered", "rejected", "retries")

    def __init__(self) -> None:
        self.offered = 0
        self.dropped = 0
        """Refused by `offer` because the queue was full."""
        self.exported = 0
        """Accepted by the collector (a 2xx), rejected ones included."""
        self.rejected = 0
        """The collector's partial_success rejected count."""
        self.failed = 0
        """Dropped after the retries, or on a permanent error."""
        self.batches = 0
        """POSTs that succeeded."""
        self.retries = 0
        """POSTs sent again after a retryable failure."""


class Endpoint:
    """Where to POST: scheme, host, port, the path prefix of the URL plus the signal path."""

    __slots__ = ("host", "path", "port", "tls")

    def __init__(self, url: str, signal_path: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("OTLP endpoint must be an http:// or https:// URL with a host")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.path = parts.path.rstrip("/") + signal_path

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def rejected_count(body: bytes) -> int:
    """`partial_success.rejected_*` (field 1 of field 1 in every Export*ServiceResponse), as
    protobuf reads it (a message field seen twice is merged: the last value wins); 0 when
    absent, negative or unreadable."""
    found = 0
    try:
        for number, wire_type, value in fields(body):
            if number == 1 and wire_type == LEN and isinstance(value, bytes):
                for n2, w2, v2 in fields(value):
                    if n2 == 1 and w2 == VARINT and isinstance(v2, int):
                        found = v2 if v2 < 1 << 63 else 0
    except ValueError:
        return 0
    return found


class OtlpExporter(Generic[T]):
    """Queue records, POST them in batches from a background task (see the module doc)."""

    def __init__(self, url: str, signal_path: str, encode: Callable[[Sequence[T]], bytes], *,
                 max_queue: int = 2048, max_batch: int = 512, flush_interval: float = 1.0,
                 timeout: float = 5.0, max_retries: int = 5, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, headers: Sequence[tuple[str, str]] = (),
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.endpoint = Endpoint(url, signal_path)
        self.encode = encode
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stats = ExportStats()
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()
        """Set when a batch is full (or on close): flush before the interval ends."""
        self._stop = asyncio.Event()
        """Set on close: a backoff ends early."""
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._failing = False
        self._ssl = (ssl_context or ssl.create_default_context()) if self.endpoint.tls else None
        for k, v in headers:
            if not k or any(c in k + v for c in "\r\n\0") or ":" in k:
                raise ValueError("OTLP header names and values must not contain CR, LF or "
                                 "NUL (nor a name a colon)")
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        self._head = (f"POST {self.endpoint.path} HTTP/1.1\r\nHost: {self.endpoint.authority}"
                      f"\r\nContent-Type: application/x-protobuf\r\nUser-Agent: tulle\r\n"
                      f"{extra}").encode("latin-1")

    # -- the producer side (the request path) ------------------------------------------------

    def offer(self, item: T) -> bool:
        """Queue a record; never blocks.  False (and counted) when the queue is full."""
        stats = self.stats
        stats.offered += 1
        queue = self._queue
        if len(queue) >= self.max_queue or self._closing:
            stats.dropped += 1
            return False
        queue.append(item)
        if len(queue) >= self.max_batch and not self._wake.is_set():
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        """Records waiting in the queue."""
        return len(self._queue)

    # -- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flush (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, deadline: float = 2.0) -> None:
        """Send what is queued (within `deadline` seconds), then stop; what is left is
        counted as failed."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), deadline)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.stats.failed += len(self._queue)
        self._queue.clear()
        self._drop_conn()

    async def flush(self) -> None:
        """Send everything queued now (tests, shutdown)."""
        while self._queue:
            await self._send_batch()

    async def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if not self._closing and len(queue) < self.max_batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                self._wake.clear()
                if queue:
                    await self._send_batch()
                elif self._closing:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end telemetry silently
            log.exception("OTLP exporter to %s stopped", self.endpoint.authority)

    async def _send_batch(self) -> None:
        queue = self._queue
        n = min(len(queue), self.max_batch)
        batch = [queue.popleft() for _ in range(n)]
        body = self.encode(batch)
        stats = self.stats
        attempt = 0
        while True:
            try:
                rejected = await asyncio.wait_for(self._post(body), self.timeout)
            except (ExportError, OSError, TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError) as exc:
                self._drop_conn()
                retryable = getattr(exc, "retryable", True)
                reason = str(exc) or type(exc).__name__
                if not retryable or attempt >= self.max_retries or self._closing:
                    stats.failed += n
                    self._note_failure(reason, n)
                    return
                delay = min(self.backoff_initial * (2 ** attempt), self.backoff_max)
                delay *= random.uniform(0.5, 1.0)
                after = getattr(exc, "retry_after", 0.0)
                if after:
                    delay = min(max(delay, after), self.backoff_max)
                attempt += 1
                stats.retries += 1
                await self._sleep(delay)
                continue
            stats.batches += 1
            stats.exported += n
            stats.rejected += rejected
            if self._failing:
                self._failing = False
                log.info("OTLP export to %s works again", self.endpoint.authority)
            return

    async def _sleep(self, delay: float) -> None:
        """Back off, but wake early when closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _note_failure(self, reason: str, n: int) -> None:
        if not self._failing:
            self._failing = True
            log.warning("OTLP export to %s failed (%s): %d records dropped; further failures "
                        "are counted, not logged, until it works again",
                        self.endpoint.authority, reason, n)

    # -- one POST -------------------------------------------------------------------------

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()

    async def _post(self, body: bytes) -> int:
        """POST one encoded batch; returns the rejected count; raises ExportError."""
        if self._conn is None:
            ep = self.endpoint
            self._conn = await asyncio.open_connection(
                ep.host, ep.port, ssl=self._ssl, limit=MAX_HEAD,
                server_hostname=ep.host if self._ssl is not None else None)
        reader, writer = self._conn
        writer.write(self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ExportError("response head too large", True) from None
        status, headers = _parse_head(raw)
        resp, keep = await _read_body(reader, status, headers)
        if not keep or headers.get("connection", "").lower() == "close":
            self._drop_conn()
        if 200 <= status < 300:
            return rejected_count(resp)
        retry_after = 0.0
        if status in RETRYABLE:
            value = headers.get("retry-after", "")
            if value.isdigit():
                retry_after = float(min(int(value), 3600))
        raise ExportError(f"HTTP {status}", status in RETRYABLE, retry_after)


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() \
            or len(parts[1]) != 3:
        raise ExportError("malformed response status line", True)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ExportError("malformed response header", True)
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, status: int,
                     headers: dict[str, str]) -> tuple[bytes, bool]:
    """The response body (at most MAX_BODY bytes) and whether the connection can carry the
    next request (not when the body ran to the connection's end)."""
    if status in (204, 304) or 100 <= status < 200:
        return b"", status >= 200
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size_text = size_line.split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 8:
                raise ExportError("malformed chunked response", True)
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ExportError("malformed chunked response", True) from None
            if len(out) + size > MAX_BODY:
                raise ExportError("response body too large", True)
            if size == 0:
                for _ in range(64):  # trailers: each line bounded by the reader's limit
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        return bytes(out), True
                raise ExportError("too many response trailers", True)
            out += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ExportError("malformed chunked response", True)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(length) > 12:
            raise ExportError("malformed response content-length", True)
        n = int(length)
        if n > MAX_BODY:
            raise ExportError("response body too large", True)
        return await reader.readexactly(n), True
    out = bytearray()  # no framing: the body ends with the connection
    while True:
        data = await reader.read(MAX_BODY + 1 - len(out))
        if not data:
            return bytes(out), False
        out += data
        if len(out) > MAX_BODY:
            raise ExportError("response body too large", True)
