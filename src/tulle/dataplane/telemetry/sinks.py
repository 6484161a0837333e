"""Where access and flow log records go: stdout, a file, or an OTLP collector.

Why this shape: a record is made on the request path (or a connection's close) and must
never wait for its sink.  Every sink takes records with `offer()`, which appends to a
bounded queue and returns at once; a full queue drops the record and counts it.  The slow
part runs elsewhere:

* `LineSink` (stdout, file): a writer *thread* renders and writes lines.  A write to a pipe
  nobody reads, or to a file on a stalled disk, blocks that thread only; the event loop
  goes on, the queue fills, drops are counted.  A JSON access log hands it a C batch
  instead of a queue (`use_batch`, ADR 0080): lines are written into the batch where they
  are made, and the thread writes the batch as it is.  A file is opened for append by the thread
  and reopened when it was moved or removed (logrotate's default `create` mode), checked
  at most once a second, before a write.  A write that fails inside a line leaves the rest
  of that line to be written first, so the output never holds half a line with more after
  it (`LineSink._failed`).
* `OtlpLogSink`: the shared OTLP/HTTP exporter (`otlp/exporter.py`) on the loop, records
  encoded as OTLP log records (`otlp/logs.py`) when a batch is sent.

`SinkStats` counts offered, dropped (queue full), written, failed (a write or an export
that failed: those records are lost), for `tulle_proxy_log_records_total`; each count has
one thread that adds to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from tulle.proxyconfig.logs import LogSink

if TYPE_CHECKING:  # imported by an OTLP sink when one is built (ADR 0068)
    from tulle.dataplane.telemetry.otlp.common import Value
    from tulle.dataplane.telemetry.otlp.exporter import OtlpExporter
    from tulle.dataplane.telemetry.otlp.logs import LogItem

log: Final = logging.getLogger("tulle.telemetry.logs")

Item = tuple[Any, int]
"""A record (a mapping of fields, or a struct a line sink's `lines` encodes) and its time
(Unix nanoseconds)."""

BATCH: Final = 512
"""Records written (or exported) in one go; a full batch wakes the writer early."""
REOPEN_CHECK = 1.0
"""Seconds between checks that a file sink's path still names the file it writes."""
FULL: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOSPC, errno.EDQUOT})
"""Write errors after which the same open file takes more later: a full pipe that does not
block, a full disk or quota.  A line one of them tore is finished on that file."""


class SinkStats:
    """A sink's counts, each added to by one thread only: a `+=` on an attribute is a read and
    a write, and a switch of threads between the two would lose the other thread's count (a
    lock would cost every record).  The loop's thread counts `offered`, `dropped` and
    `loop_failed` (records it lost: one the access log could not encode, those `close` found
    unwritten); the writer thread `written` and `writer_failed` (records a failed write, or a
    renderer that raised, lost).  `failed` is both.  (An OTLP sink's are its exporter's.)"""

    __slots__ = ("batch", "dropped", "loop_failed", "offered", "writer_failed", "wrote")

    def __init__(self) -> None:
        self.offered = 0
        self.dropped = 0
        self.wrote = 0
        """Records the writer thread wrote itself (`write`, a queue's batch)."""
        self.loop_failed = 0
        self.writer_failed = 0
        self.batch: LineBatch | None = None
        """A C batch whose `serve` counts the lines it writes (ADR 0082)."""

    @property
    def written(self) -> int:
        """Records written: the writer thread's own writes, and the lines its C batch's `serve`
        wrote, counted there as each half is (read now, not when `serve` returns)."""
        batch = self.batch
        return self.wrote + (batch.served if batch is not None else 0)

    @property
    def failed(self) -> int:
        """Records lost after they were taken, whichever thread counted them."""
        return self.loop_failed + self.writer_failed


DROPPED: Final = 0
"""`Lines.access` / `add`: the line was dropped (the batch is full or sealed)."""
WAKE: Final = 2
"""`Lines.access` / `add`: the line was appended and its half now calls for a write (1: only
appended)."""


class LineBatch(Protocol):
    """Lines written where they are made (`_aline.Lines`, ADR 0080): the loop's thread appends,
    the writer thread writes a whole half with the GIL released: one the loop's thread handed
    over while the writer waits in `serve` (ADR 0082), or the one `write` takes."""

    served: int

    def serve(self, fd: int, seconds: float, /) -> tuple[int, int, int]: ...

    def nudge(self) -> None: ...

    def write(self, fd: int, /) -> tuple[int, int]: ...

    def torn(self) -> bytes: ...

    def clear(self) -> int: ...

    def seal(self) -> None: ...

    def __len__(self) -> int: ...


class RecordSink(Protocol):
    @property
    def stats(self) -> SinkStats: ...

    def offer(self, record: Any, time_ns: int) -> bool: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


class LineSink:
    """Lines to stdout or a file, written by a thread of its own."""

    def __init__(self, name: str, cfg: LogSink, render: Callable[[Mapping[str, Any]], str]) -> None:
        self.name = name
        self.path = cfg.path if cfg.kind == "file" else ""
        self.max_queue = cfg.queue_size
        self.interval = cfg.flush_interval_ms / 1000
        self.render = render
        self.lines: Callable[[list[Any]], bytes] | None = None
        """When set, a whole batch of records as lines, each ended by a newline, in one call
        (JSON: `access_record.json_lines`); `render` is then the fallback for a batch it
        cannot encode, record by record."""
        self.stats = SinkStats()
        self.batch: LineBatch | None = None
        """Lines written straight into a C batch (`use_batch`); None: records are queued."""
        self._queue: deque[Any] = deque()
        """Records alone: a line carries its time inside the record, so the `time_ns` of
        `offer` is not kept (no tuple per record for the cycle collector to scan, ADR 0066)."""
        self._append: Callable[[Any], None] = self._queue.append
        """The queue's `append`, bound once: compiled code calls a deque's method by name, a
        method lookup per record (`offer` ~120 instructions cheaper under callgrind)."""
        self._wake = threading.Event()
        self._stop = False
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0
        self._failing = False
        self._torn = b""
        """The rest of the line a failed write stopped inside, written first on the file that
        line began in (still open: closing it drops this, see `_failed`)."""
        self._writer = threading.Thread(target=self._run, name=f"tulle-{name}", daemon=True)

    def offer(self, record: Any, time_ns: int) -> bool:
        stats = self.stats
        stats.offered += 1
        queue = self._queue
        if len(queue) >= self.max_queue or self._stop:
            stats.dropped += 1
            return False
        self._append(record)
        if len(queue) == BATCH:
            self._wake.set()
            batch = self.batch
            if batch is not None:
                batch.nudge()  # a writer waiting in `serve` does not see the event
        return True

    def use_batch(self, batch: LineBatch) -> None:
        """Lines arrive in `batch` (the access log writes them there and reports each with
        `took`); the writer thread writes it ahead of the queue."""
        self.batch = batch
        self.stats.batch = batch

    def took(self, result: int) -> None:
        """One line offered to the batch, with the batch's answer (`DROPPED`, `WAKE`, or 1:
        appended)."""
        stats = self.stats
        stats.offered += 1
        if result == DROPPED:
            stats.dropped += 1
        elif result == WAKE:
            self._wake.set()

    def start(self) -> None:
        if not self._writer.is_alive():
            self._writer.start()

    async def close(self, deadline: float = 2.0) -> None:
        """Write what is queued (the thread does, within `deadline`), then stop.

        What the thread has not taken by then is counted failed: no write will take it, the
        thread ended or not.  A thread still blocked in a write (a FIFO nobody reads) stays
        blocked, as a daemon, and counts what that write holds itself when it returns:
        counted here as well, those lines would be counted twice, or failed and then
        written.  Each line is taken once, by one thread: the batch's `clear` and `write`
        each hold the GIL, the queue is taken off record by record (`_take`)."""
        self._stop = True
        batch = self.batch
        if batch is not None:
            batch.seal()  # later lines are dropped and counted, as the queue's are
        self._wake.set()
        if self._writer.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join, deadline)
        left = len(_take(self._queue, len(self._queue)))
        if batch is not None:
            left += batch.clear()  # the active half: the half a write holds is not touched
        self.stats.loop_failed += left

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:  # bounded by `close`: each turn waits at most an interval
            batch = self.batch
            try:
                waited = batch is not None and not self._stop and self._serve(batch)
            except Exception:  # a bug, or MemoryError: logged once a run, as `_flush`'s
                waited = False  # below, and the thread waits an interval and goes on
                if not self._failing:
                    self._failing = True
                    log.exception("%s: the writer failed; it goes on", self.name)
            if not waited:
                self._wake.wait(self.interval)
                self._wake.clear()
            # Read before the flush, not after: once `close` has stopped the sink (and sealed
            # its batch, in the same step of the loop's thread) nothing more comes, so this
            # flush is the last and empties everything.  Read after, a flush that began before
            # `close` (two halves at most) could end with lines the loop added meanwhile
            # still held, and `close` would count them failed.
            stop = self._stop
            try:
                self._flush()
            except Exception:  # a bug, or MemoryError: without this the thread would end
                # and every later record would wait in a queue nobody drains; it is logged
                # (once a run, like a failed write) and the thread goes on
                if not self._failing:
                    self._failing = True
                    log.exception("%s: the writer failed; it goes on", self.name)
            if stop:
                break
        self._close_file()

    def _flush(self) -> None:
        """What waits, written: the batch (both halves at most: the loop's thread may fill
        one while the other is written), then the queue."""
        batch = self.batch
        if batch is not None:
            for _ in range(2):
                if not len(batch):
                    break
                self._write_lines(batch)
        queue = self._queue
        while queue:
            self._write_batch()
        if self._torn:  # no line came after it: the line is finished on its own
            self._write(b"", 0)

    def _serve(self, batch: LineBatch) -> bool:
        """The halves the loop's thread hands over, written as they come for up to one flush
        interval, without the GIL (`Lines.serve`, ADR 0082): a half is taken the moment it
        calls for a write, not once this thread has the GIL back.  False, without waiting, when
        the file cannot be opened before a first turn (or a torn line not finished): `_flush`
        then meets the failure and counts what it loses.  What is below a half's `wake`
        `_flush` writes after.

        A file is served in turns that end when its once-a-second look at the path is due
        (`_open`, before the next turn): `serve` writes every half to the descriptor it was
        given, and one turn of a whole interval (up to a minute) would write that long into a
        file logrotate moved away, where the sink starts a new one within a second."""
        end = time.monotonic() + self.interval
        turns = 0
        while True:  # bounded: the turns end by `end`
            try:
                self._finish_torn()
                fd = self._open()
            except OSError:
                return turns > 0  # after a turn: `_flush` meets the failure now, not later
            turns += 1
            start = time.monotonic()
            seconds = end - start
            if seconds <= 0:
                return True
            if self.path:
                seconds = min(seconds, max(self._checked + REOPEN_CHECK - start, 0.001))
            written, lost, err = batch.serve(fd, seconds)  # `written`: in `batch.served`
            if err:
                self._failed(lost, OSError(err, os.strerror(err)), batch.torn())
                return True
            if written:
                self._failing = False
            if time.monotonic() < start + seconds:  # before its time: a nudge, a seal, or
                return True  # a half due that no line handed over (`_flush` writes it)

    def _write_lines(self, batch: LineBatch) -> None:
        try:
            self._finish_torn()
            fd = self._open()
        except OSError as exc:
            self._failed(batch.clear(), exc, self._torn)
            return
        count, err = batch.write(fd)
        if err:
            self._failed(count, OSError(err, os.strerror(err)), batch.torn())
            return
        self.stats.wrote += count
        self._failing = False

    def _write_batch(self) -> None:
        records = _take(self._queue, BATCH)
        if not records:  # `close` took them, giving up on this thread
            return
        data = b""
        count = len(records)
        batch = self.lines
        if batch is not None:
            try:
                data = batch(records)
            except Exception:  # e.g. a lone surrogate: record by record, as below
                data = b""
        if not data:
            data, count = self._render(records)
            if not count:
                return
        self._write(data, count)

    def _render(self, records: list[Any]) -> tuple[bytes, int]:
        lines = []
        render = self.render
        for record in records:
            try:
                lines.append(render(record))
            except Exception:  # a bug in a renderer loses its record, not the sink
                self.stats.writer_failed += 1
                log.exception("%s: a record could not be rendered", self.name)
        if not lines:
            return b"", 0
        return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"), len(lines)

    def _write(self, data: bytes, count: int) -> None:
        view = memoryview(data)
        try:
            self._finish_torn()
            fd = self._open()
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            self._failed(count, exc, self._torn or _rest_of_line(data, len(data) - len(view)))
            return
        self.stats.wrote += count
        self._failing = False

    def _finish_torn(self) -> None:
        """The rest of the line the last failed write stopped inside, written on the file that
        line began in (still open), before anything else: before `_open` too, so that a file
        logrotate moved meanwhile gets its last line whole.  Raises OSError, keeping what is
        still unwritten of it."""
        rest = self._torn
        if not rest:
            return
        fd = self._fd if self.path else 1
        view = memoryview(rest)
        try:
            while view:
                n = os.write(fd, view)  # (not inside the slice: mypyc evaluates a memoryview
                view = view[n:]         # slice's start twice, and would write twice)
        finally:
            self._torn = bytes(view)

    def _failed(self, count: int, exc: OSError, torn: bytes = b"") -> None:
        """`count` records were lost to a failed open or write: counted, the first failure of
        a run logged.  `torn`: the rest of a line the failure stopped inside.

        A line torn by a full pipe or disk (`FULL`) keeps its file open, and its rest is
        written there first next time (`_finish_torn`): nothing is written after half a
        line.  After any other failure the file is closed (the next write opens it again)
        and a torn line's rest dropped: the file then opened may be another stream, a new
        file at a moved path or a FIFO's next reader, and must not begin with the end of a
        line.  (So a regular file torn by another error, EIO or EFBIG, and later opened
        again unchanged still has its torn line followed by later ones, as before.)
        Bounded: one line's rest at most, kept only while its file is open."""
        self.stats.writer_failed += count
        if torn and exc.errno in FULL:
            self._torn = torn
        else:
            self._close_file()
        if not self._failing:
            self._failing = True
            log.warning("%s: writing failed (%s); records are dropped and counted until it "
                        "works again", self.name, exc.strerror or exc)

    def _open(self) -> int:
        if not self.path:
            return 1
        now = time.monotonic()
        if self._fd >= 0 and now - self._checked >= REOPEN_CHECK:
            self._checked = now
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._inode
            except FileNotFoundError:
                moved = True
            if moved:  # rotated: the old file is someone else's now
                self._close_file()
        if self._fd < 0:
            # A FIFO nobody reads blocks here, in this thread only.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            st = os.fstat(fd)
            self._fd, self._inode, self._checked = fd, (st.st_dev, st.st_ino), now
        return self._fd

    def _close_file(self) -> None:
        """The file closed (stdout is only let go), and with it the rest of a line torn there:
        it can no longer be finished where it began."""
        if self._fd > 2:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self._torn = b""


def _take(queue: deque[Any], most: int) -> list[Any]:
    """Up to `most` records off `queue`, one `popleft` each: a step under the GIL, so that when
    the writer and `close` take at the same time each record goes to one of them, never both
    or neither (fewer than `most` when the other took the rest)."""
    records: list[Any] = []
    append = records.append
    popleft = queue.popleft
    with contextlib.suppress(IndexError):
        for _ in range(min(len(queue), most)):
            append(popleft())
    return records


def _rest_of_line(data: bytes, done: int) -> bytes:
    """The rest of the line a write that stopped after `done` bytes of `data` was inside, to its
    newline (or the end); b"" when it stopped between lines."""
    if done == 0 or data[done - 1] == 10:  # b"\n"
        return b""
    end = data.find(b"\n", done)
    return data[done:] if end < 0 else data[done:end + 1]


class OtlpLogSink:
    """Records as OTLP log records, POSTed in batches to `<endpoint>/v1/logs`."""

    def __init__(self, name: str, cfg: LogSink, resource_attributes: Mapping[str, Value],
                 body: Callable[[Mapping[str, Any]], str] | None) -> None:
        from tulle.dataplane.telemetry.otlp.exporter import OtlpExporter
        from tulle.dataplane.telemetry.otlp.logs import LogItem, LogsEncoder

        self._log_item = LogItem
        encoder = LogsEncoder(resource_attributes, f"tulle.{name}")
        self.body = body
        self.name = name

        def encode(items: Sequence[Item]) -> bytes:
            return encoder.encode([self._item(r, ns) for r, ns in items], time.time_ns())

        self.exporter: OtlpExporter[Item] = OtlpExporter(
            cfg.endpoint, "/v1/logs", encode, max_queue=cfg.queue_size,
            max_batch=min(BATCH, cfg.queue_size), flush_interval=cfg.flush_interval_ms / 1000)
        self._stats = SinkStats()

    def _item(self, record: Mapping[str, Any], ns: int) -> LogItem:
        attributes = {k: v for k, v in record.items() if not k.startswith("REQ(")}
        trace = record.get("trace_id")
        trace_id = b""
        if isinstance(trace, str) and len(trace) == 32:
            with contextlib.suppress(ValueError):
                trace_id = bytes.fromhex(trace)
        body = self.body(record) if self.body is not None else None
        return self._log_item(ns, attributes, body, trace_id=trace_id,
                              event_name=f"tulle.{self.name}")

    def offer(self, record: Any, time_ns: int) -> bool:
        """`record`: a mapping (the access log gives an OTLP sink dicts, never structs)."""
        return self.exporter.offer((record, time_ns))

    def start(self) -> None:
        self.exporter.start()

    async def close(self) -> None:
        await self.exporter.close()

    @property
    def stats(self) -> SinkStats:
        """The exporter's counts in the sinks' terms."""
        e = self.exporter.stats
        s = self._stats
        s.offered, s.dropped, s.wrote, s.writer_failed = e.offered, e.dropped, e.exported, e.failed
        return s


def build_sink(name: str, cfg: LogSink, render: Callable[[Mapping[str, Any]], str],
               text: bool, resource_attributes: Mapping[str, Value]) -> LineSink | OtlpLogSink:
    """The sink `cfg` asks for; `render` makes a line, `text`: the OTLP body is that line
    (with `json` the record's fields are the log record's attributes and it has no body)."""
    if cfg.kind == "otlp":
        return OtlpLogSink(name, cfg, resource_attributes, render if text else None)
    return LineSink(name, cfg, render)
