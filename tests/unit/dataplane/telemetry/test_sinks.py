"""Line sinks on their own: stdout, a file that cannot be opened, a renderer that raises, the
queue bound, close flushing what is queued; the access log's C batch (ADR 0080) through its
sink: close writing everything, a closed batch's room freed, a real writer under load.  A line
a failed write tore finished before any other (a real full pipe), close counting what a writer
blocked past its deadline will never take (a real FIFO), each count added to by one thread; a
file logrotate moved is left within a second while the writer serves a longer interval, and a
half filled while the other was written is written when that write ends."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tulle.dataplane.telemetry.logformat import render_json
from tulle.dataplane.telemetry.sinks import LineSink, SinkStats
from tulle.proxyconfig.logs import LogSink


async def _until(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.005)


async def test_stdout_lines(capfd: pytest.CaptureFixture[str]) -> None:
    sink = LineSink("access_log", LogSink(flush_interval_ms=10), render_json)
    sink.start()
    assert sink.offer({"a": 1}, 0) and sink.offer({"b": "x\ny"}, 0)
    await _until(lambda: sink.stats.written == 2)
    await sink.close()
    out = capfd.readouterr().out.splitlines()
    assert [json.loads(line) for line in out] == [{"a": 1}, {"b": "x\ny"}]


async def test_an_unwritable_file_counts_failures_and_keeps_trying(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "a.log"
    sink = LineSink("flow_log", LogSink(kind="file", path=str(path), flush_interval_ms=10),
                    render_json)
    sink.start()
    sink.offer({"n": 1}, 0)
    await _until(lambda: sink.stats.failed == 1)
    path.parent.mkdir()
    sink.offer({"n": 2}, 0)
    await _until(lambda: sink.stats.written == 1)
    await sink.close()
    assert path.read_text() == '{"n":2}\n'


async def test_a_renderer_that_raises_loses_only_its_record(tmp_path: Path) -> None:
    def render(r: Any) -> str:
        if r.get("bad"):
            raise RuntimeError("bug")
        return render_json(r)

    path = tmp_path / "a.log"
    sink = LineSink("access_log", LogSink(kind="file", path=str(path), flush_interval_ms=10),
                    render)
    sink.start()
    for rec in ({"n": 1}, {"bad": True}, {"n": 3}):
        sink.offer(rec, 0)
    await _until(lambda: sink.stats.written == 2)
    await sink.close()
    assert sink.stats.failed == 1 and path.read_text().splitlines() == ['{"n":1}', '{"n":3}']


async def test_the_queue_is_bounded_and_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = LineSink("access_log", LogSink(kind="file", path=str(path), queue_size=3,
                                          flush_interval_ms=60_000), render_json)
    # Not started: nothing drains the queue.
    assert [sink.offer({"n": i}, 0) for i in range(5)] == [True, True, True, False, False]
    assert (sink.stats.offered, sink.stats.dropped) == (5, 2)
    sink.start()
    await sink.close()  # writes what is queued, then stops
    assert path.read_text().splitlines() == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert not sink.offer({"n": 9}, 0)


def _batched(path: Path | None, queue_size: int = 100,
             interval_ms: int = 10) -> tuple[LineSink, Any]:
    """A sink writing the access log's C batch to `path` (None: stdout)."""
    from tulle.dataplane.telemetry.access_record import line_batch

    where: dict[str, Any] = {"kind": "stdout"} if path is None else {"kind": "file",
                                                                   "path": str(path)}
    sink = LineSink("access_log", LogSink(**where, queue_size=queue_size,
                                          flush_interval_ms=interval_ms), render_json)
    batch = line_batch(queue_size)
    if batch is None:
        pytest.skip("the C line batch is not in use (TULLE_PURE or not built)")
    sink.use_batch(batch)
    return sink, batch


async def test_a_batched_sink_writes_its_lines_and_close_flushes(tmp_path: Path) -> None:
    """The access log's C batch (ADR 0080): lines written by the thread in the order they came,
    the rest by `close`; a line after `close` is dropped and counted."""
    path = tmp_path / "a.log"
    sink, batch = _batched(path, interval_ms=60_000)
    sink.start()
    for i in range(3):
        sink.took(batch.add(b'{"n":%d}\n' % i))
    await sink.close()
    assert path.read_text().splitlines() == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert (sink.stats.offered, sink.stats.written, sink.stats.dropped) == (3, 3, 0)
    sink.took(batch.add(b'{"n":9}\n'))
    assert (sink.stats.offered, sink.stats.dropped, len(batch)) == (4, 1, 0)


async def test_a_batch_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink, batch = _batched(path, queue_size=3, interval_ms=60_000)
    results = [batch.add(b'{"n":%d}\n' % i) for i in range(5)]  # not started: nothing drains
    assert results == [1, 1, 1, 0, 0]
    for r in results:
        sink.took(r)
    assert (sink.stats.offered, sink.stats.dropped) == (5, 2)
    sink.start()
    await sink.close()
    assert path.read_text().splitlines() == ['{"n":0}', '{"n":1}', '{"n":2}']


async def test_a_batch_that_reaches_its_bytes_is_handed_to_the_writer(tmp_path: Path) -> None:
    """The interval is a minute: only the hand-over to the writer waiting in `serve` (ADR
    0082) gets the lines written, at once."""
    path = tmp_path / "a.log"
    sink, batch = _batched(path, interval_ms=60_000)
    sink.start()
    await _until(lambda: batch.serving == 1)
    for i in range(3):
        sink.took(batch.add(b'{"n":%d}\n' % i))
    await asyncio.sleep(0.1)
    assert sink.stats.written == 0
    big = b'{"pad":"%s"}\n' % (b"x" * 70_000)  # past the half's wake bytes (64 KiB)
    result = batch.add(big)
    assert result == 1  # handed over in `add`: no wake for the sink to pass on
    sink.took(result)
    await _until(lambda: sink.stats.written == 4)
    await sink.close()
    assert path.read_bytes().splitlines()[-1] == big.rstrip()


async def test_a_batched_sink_counts_a_failed_open_and_keeps_trying(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "a.log"
    sink, batch = _batched(path)
    sink.start()
    sink.took(batch.add(b'{"n":1}\n'))
    await _until(lambda: sink.stats.failed == 1)
    path.parent.mkdir()
    sink.took(batch.add(b'{"n":2}\n'))
    await _until(lambda: sink.stats.written == 1)
    await sink.close()
    assert path.read_text() == '{"n":2}\n'


async def test_close_writes_the_lines_that_came_while_the_writer_was_busy(tmp_path: Path) -> None:
    """`close` while the writer is blocked writing a half it was handed (ADR 0082): the lines
    the loop put in the other half meanwhile are the last ones, and are written once the
    blocked write ends, not counted failed.  A FIFO the test reads makes the writer block
    where the test wants it: the first half (65 lines of 1,011 bytes, the one that reaches
    64 KiB) is 179 bytes more than the pipe holds."""
    fifo = tmp_path / "a.fifo"
    sink, batch = _batched(fifo, queue_size=10_000, interval_ms=60_000)
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the sink's open does not block
    line = b'{"pad":"%s"}\n' % (b"x" * 1000)
    got = bytearray()
    try:
        sink.start()
        await _until(lambda: batch.serving)
        for _ in range(100):
            sink.took(batch.add(line))
        await _until(lambda: batch.writing)  # the first 65, blocked on the full pipe
        assert len(batch) == 100
        last = [b'{"n":%d}\n' % i for i in range(3)]
        for one in last:  # into the active half, with lines 66-100
            sink.took(batch.add(one))
        closing = asyncio.create_task(sink.close())
        await asyncio.sleep(0)  # close has stopped the sink and waits for its thread
        assert batch.add(b"late\n") == 0  # sealed
        os.set_blocking(reader, True)
        got += await asyncio.get_running_loop().run_in_executor(None, _read_to_end, reader)
        await closing
    finally:
        os.close(reader)
    assert (sink.stats.offered, sink.stats.written, sink.stats.failed) == (103, 103, 0)
    assert bytes(got) == line * 100 + b"".join(last)


def _read_to_end(fd: int) -> bytes:
    out = bytearray()
    while chunk := os.read(fd, 1 << 16):
        out += chunk
    return bytes(out)


async def test_a_closed_batched_sink_holds_no_room(tmp_path: Path) -> None:
    """A retired access log stays referenced for its counts (`LogsRuntime` keeps it), and its
    batch with it: once the sink is closed the batch's halves are freed, not kept for lines
    that can no longer come (up to 2 x 256 KiB per retired logger, for the process's life)."""
    sink, batch = _batched(tmp_path / "a.log", interval_ms=60_000)
    sink.start()
    for i in range(3):
        sink.took(batch.add(b'{"n":%d}\n' % i))
    await _until(lambda: batch.room() > 0)
    await sink.close()
    assert sink.stats.written == 3
    assert batch.room() == 0
    sink.took(batch.add(b'{"n":9}\n'))  # sealed: dropped, and no room taken for it
    assert (sink.stats.dropped, batch.room()) == (1, 0)


async def test_a_batched_sink_under_load_writes_each_line_once_in_order(tmp_path: Path) -> None:
    """The loop's thread encodes 20,000 records into the batch (every 97th through the Python
    fallback, which may let the writer take the GIL mid-record) while the writer thread writes
    halves into a FIFO a third thread reads slowly: every line arrives once, in order, and the
    counts add up."""
    from tests.unit.dataplane.telemetry.test_aline_lines import LINE_VALUES

    fifo = tmp_path / "a.fifo"
    sink, batch = _batched(fifo, queue_size=100_000, interval_ms=10)
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keep_open = os.open(fifo, os.O_WRONLY)  # no end of file before the sink's own open
    os.set_blocking(reader, True)
    chunks: list[bytes] = []

    def read_slowly() -> None:
        while chunk := os.read(reader, 4096):
            chunks.append(chunk)
            time.sleep(0.00001)

    slow = threading.Thread(target=read_slowly)
    slow.start()
    n = 20_000
    values: list[Any] = list(LINE_VALUES)
    try:
        sink.start()
        for i in range(n):
            values[7] = i  # bytes_received: the line's number
            values[15] = True if i % 97 == 0 else 1  # a bool: the fallback writes the line
            sink.took(batch.access(*values))
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await sink.close(deadline=10)
        assert not sink._writer.is_alive()
    finally:
        os.close(keep_open)
        slow.join(10)
        os.close(reader)
    lines = b"".join(chunks).splitlines()
    assert [json.loads(line)["bytes_received"] for line in lines] == list(range(n))
    assert sum(json.loads(line)["upstream_request_attempt_count"] is True for line in lines) == 207
    assert (sink.stats.offered, sink.stats.written, sink.stats.dropped, sink.stats.failed) == (
        n, n, 0, 0)


class _FlakyBatch:
    """A line batch (`sinks.LineBatch`) whose first write raises what no write should: a bug
    in the writer's path, not an `OSError`."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.writes = 0

    def write(self, fd: int, /) -> tuple[int, int]:
        self.writes += 1
        if self.writes == 1:
            raise RuntimeError("a bug in the writer's path")
        data, self.lines = b"".join(self.lines), []
        os.write(fd, data)
        return data.count(b"\n"), 0

    served = 0

    def serve(self, fd: int, seconds: float, /) -> tuple[int, int, int]:
        time.sleep(min(seconds, 0.005))  # never hands a half over: `write` takes the lines
        return 0, 0, 0

    def nudge(self) -> None:
        pass

    def torn(self) -> bytes:
        return b""

    def clear(self) -> int:
        n, self.lines = len(self.lines), []
        return n

    def seal(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.lines)


async def test_the_writer_outlives_an_unexpected_error(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Before, any exception but `OSError` ended the writer thread: the sink then only filled
    up and dropped.  Now it is logged once and the next lines are written."""
    path = tmp_path / "a.log"
    sink = LineSink("access_log", LogSink(kind="file", path=str(path), flush_interval_ms=10),
                    render_json)
    batch = _FlakyBatch()
    sink.use_batch(batch)
    sink.start()
    batch.lines.append(b'{"n":1}\n')
    sink.took(1)
    await _until(lambda: batch.writes >= 1)
    batch.lines.append(b'{"n":2}\n')
    sink.took(1)
    await _until(lambda: sink.stats.written >= 1)
    await sink.close()
    assert path.read_text().splitlines()[-1] == '{"n":2}'
    assert [r.message for r in caplog.records if "writer failed" in r.message] == [
        "access_log: the writer failed; it goes on"]


@contextlib.contextmanager
def _stdout_a_full_pipe(blocking: bool = False) -> Iterator[int]:
    """fd 1 made, for the test, a pipe of one page that does not block (a parent's pipe set
    non-blocking: a write of more than it holds takes part, the next fails with EAGAIN, as a
    full disk's ENOSPC would), or with `blocking` one that blocks a write until it is read;
    yields its read end, fd 1 put back after."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, blocking)
    saved = os.dup(1)
    os.dup2(w, 1)
    os.close(w)
    try:
        yield r
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(r)


def _read_lines(fd: int, n: int) -> bytes:
    """From `fd`, until `n` newlines came (5 s at most: a line that never ends fails the test's
    own assertions, not a hang)."""
    os.set_blocking(fd, False)
    got = b""
    deadline = time.monotonic() + 5
    while got.count(b"\n") < n and time.monotonic() < deadline:
        try:
            got += os.read(fd, 1 << 16)
        except BlockingIOError:
            time.sleep(0.002)
    return got


PAD = "x" * 1000


async def test_a_line_a_failed_write_tore_is_finished_before_the_next_one() -> None:
    """Eight lines of ~1 KB for a pipe that takes 4 KiB: the write ends inside the fifth line,
    then EAGAIN.  Before, the next lines went on after half a line (a reader saw one corrupt
    line); now the rest of that line is written first.  The eight are counted failed, as
    before: a failed write loses its lines (the one finished later among them)."""
    with _stdout_a_full_pipe() as r:
        sink = LineSink("flow_log", LogSink(flush_interval_ms=10), render_json)
        for i in range(8):
            sink.offer({"n": i, "pad": PAD}, 0)
        sink.start()  # one batch of eight, one write
        await _until(lambda: sink.stats.failed == 8)
        got = os.read(r, 1 << 16)
        assert len(got) == 4096 and not got.endswith(b"\n")  # inside the fifth line
        for i in (8, 9):
            sink.offer({"n": i}, 0)
        await _until(lambda: sink.stats.written == 2)
        got += _read_lines(r, 7 - got.count(b"\n"))
        await sink.close()
    assert [json.loads(line)["n"] for line in got.splitlines()] == [0, 1, 2, 3, 4, 8, 9]
    assert (sink.stats.offered, sink.stats.written, sink.stats.failed) == (10, 2, 8)


async def test_a_torn_line_is_finished_even_when_no_line_follows() -> None:
    """The rest waits for the pipe, not for a next line: the writer finishes the line at its
    next flush that finds room, so a reader is not left with half a line until traffic comes."""
    with _stdout_a_full_pipe() as r:
        sink = LineSink("flow_log", LogSink(flush_interval_ms=10), render_json)
        for i in range(8):
            sink.offer({"n": i, "pad": PAD}, 0)
        sink.start()
        await _until(lambda: sink.stats.failed == 8)
        got = os.read(r, 1 << 16)
        got += await asyncio.get_running_loop().run_in_executor(None, _read_lines, r, 1)
        await sink.close()
    assert [json.loads(line)["n"] for line in got.splitlines()] == [0, 1, 2, 3, 4]


async def test_a_batched_sinks_torn_line_is_finished_before_the_next_one() -> None:
    """The same through the access log's C batch (ADR 0080): `Lines.write` hands the torn
    line's rest over (`torn`) and the sink writes it before the next half."""
    with _stdout_a_full_pipe() as r:
        sink, batch = _batched(None, interval_ms=10)
        lines = [b'{"n":%d,"pad":"%s"}\n' % (i, PAD.encode()) for i in range(8)]
        for line in lines:
            sink.took(batch.add(line))
        sink.start()
        await _until(lambda: sink.stats.failed == 8)
        got = os.read(r, 1 << 16)
        assert len(got) == 4096 and not got.endswith(b"\n")
        for i in (8, 9):
            sink.took(batch.add(b'{"n":%d}\n' % i))
        await _until(lambda: sink.stats.written == 2)
        got += _read_lines(r, 7 - got.count(b"\n"))
        await sink.close()
    assert got == b"".join(lines[:5]) + b'{"n":8}\n{"n":9}\n'
    assert (sink.stats.offered, sink.stats.written, sink.stats.failed) == (10, 2, 8)


def test_a_torn_line_is_finished_on_its_own_file_never_begins_a_new_one(tmp_path: Path) -> None:
    """The rest of a torn line belongs to the file it began in.  A full disk's write (ENOSPC
    after part of a line: set up here as the writer's own `_failed` records it, a real one
    needs a full file system) keeps the file open; if logrotate moves the file meanwhile the
    line is still finished in the moved file before the sink opens the new one, which begins
    with a whole line.  After any other error the file is closed and the rest dropped: a file
    opened again may be a new one, or a FIFO a new reader reads.  (This thread plays the
    writer's part: the sink is not started.)"""
    path = tmp_path / "a.log"
    sink = LineSink("flow_log", LogSink(kind="file", path=str(path)), render_json)
    sink.offer({"n": 1}, 0)
    sink._flush()
    with path.open("ab") as f:
        f.write(b'{"n":2,"pa')  # what the disk took of the next line
    sink._failed(1, OSError(errno.ENOSPC, "No space left on device"), b'd":1}\n')
    moved = tmp_path / "a.log.1"
    path.rename(moved)
    sink._checked = -10.0  # the once-a-second check for a moved file is due
    sink.offer({"n": 3}, 0)
    sink._flush()
    assert moved.read_bytes() == b'{"n":1}\n{"n":2,"pad":1}\n'
    assert path.read_bytes() == b'{"n":3}\n'
    # EPIPE after part of a line: the head went to a reader that is gone; the path next
    # opened is another stream (here a new file), which must begin with a whole line
    sink._failed(1, OSError(errno.EPIPE, "Broken pipe"), b'd":1}\n')
    path.rename(moved)
    sink.offer({"n": 5}, 0)
    sink._flush()
    assert path.read_bytes() == b'{"n":5}\n'
    sink._close_file()


class _Watched(SinkStats):
    """A sink's counts that note which threads add to each of them (once made)."""

    by: dict[str, set[int]] | None

    def __init__(self) -> None:
        object.__setattr__(self, "by", None)
        super().__init__()
        object.__setattr__(self, "by", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if self.by is not None:
            self.by.setdefault(name, set()).add(threading.get_ident())
        object.__setattr__(self, name, value)


async def test_each_count_is_added_to_by_one_thread_only(tmp_path: Path) -> None:
    """`failed` had two threads adding to it: the writer's (a failed write) and the loop's (a
    record the access log could not encode, what `close` finds left).  A `+=` on an attribute
    is a read and a write; a switch of threads between them loses the other thread's count.
    Now each count has one thread that adds to it, and `failed` is the sum of the writer's
    and the loop's, so none can be lost, with no lock on the request path.  Watched here (the
    pure build: a compiled sink's counts cannot be), because the loss itself cannot be made
    to happen on demand: CPython 3.11 switches threads at calls and backward jumps, not
    inside `stats.failed += 1`; free-threaded Python would, and so would a call on the right
    of the `+=`, as in `close`."""
    from tests.unit.dataplane.telemetry.test_access_log import ME, _ctx, _stream

    from tulle import native
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.telemetry.access_log import AccessLogger
    from tulle.proxyconfig.logs import AccessLogTelemetry

    if native.mode()[0] == "compiled":
        pytest.skip("a compiled sink's counts cannot be watched (and its += is not interrupted)")
    path = tmp_path / "missing-dir" / "a.log"  # every write fails: the writer counts
    log = AccessLogger(AccessLogTelemetry(sink=LogSink(kind="file", path=str(path),
                                                       flush_interval_ms=10)), {}, ME)
    sink = log.lines
    assert sink is not None and not log.batched
    watched = _Watched()
    sink.stats = watched
    sink.start()
    log.log(_stream(ConnectionFacts("out", "outbound", ("127.0.0.1", 5000)), _ctx(None)), 10.5)
    await _until(lambda: watched.failed == 1)  # the writer could not open the file
    bad = ConnectionFacts("out-\udc80", "outbound", ("127.0.0.1", 5000))  # cannot be encoded
    log.log(_stream(bad, _ctx(None)), 10.5)
    await sink.close()
    assert (watched.offered, watched.failed) == (2, 2)
    assert watched.by is not None
    mixed = {name: len(threads) for name, threads in watched.by.items() if len(threads) > 1}
    assert mixed == {}


@contextlib.contextmanager
def _fifo_nobody_reads(path: Path) -> Iterator[int]:
    """A FIFO with no reader and full: the test holds it open read-write (so that the sink's
    open does not block) and fills it; yields that descriptor, which the test reads from later
    to let a blocked write through."""
    os.mkfifo(path)
    held = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(held, b"." * 4096)  # no newline: the lines that follow are countable
        yield held
    finally:
        os.close(held)


async def test_close_counts_the_lines_a_blocked_writer_will_never_take(tmp_path: Path) -> None:
    """The writer blocked past the deadline in a write to a FIFO nobody reads: `close` gives
    up on it, as before, and now counts failed the lines still held in the batch, which no
    write will take (the batch is sealed, and `clear` takes them out of the writer's reach).
    The half the blocked write holds is the writer's to count when the write returns: counted
    by `close` as well it would be counted twice, or failed and then written.  Once the FIFO
    is read the write goes through, the writer counts it, and every line is counted once."""
    fifo = tmp_path / "a.fifo"
    sink, batch = _batched(fifo, queue_size=10_000, interval_ms=10)
    with _fifo_nobody_reads(fifo) as held:
        for i in range(10):  # before the writer runs: its first write takes the ten
            sink.took(batch.add(b'{"n":%d}\n' % i))
        sink.start()
        await _until(lambda: batch.writing)
        for i in range(10, 15):  # the other half
            sink.took(batch.add(b'{"n":%d}\n' % i))
        await sink.close(deadline=0.2)
        assert sink._writer.is_alive()  # still blocked: a daemon, as before
        stats = sink.stats
        assert (stats.offered, stats.written, stats.failed, stats.dropped) == (15, 0, 5, 0)
        assert len(batch) == 10 and batch.writing  # the blocked write's half, not counted yet
        got = await asyncio.get_running_loop().run_in_executor(None, _read_lines, held, 10)
        await _until(lambda: not sink._writer.is_alive())
    assert got.lstrip(b".") == b"".join(b'{"n":%d}\n' % i for i in range(10))
    assert (stats.offered, stats.written, stats.failed, stats.dropped) == (15, 10, 5, 0)
    assert (len(batch), batch.room()) == (0, 0)


async def test_close_counts_the_records_a_blocked_writer_will_never_take(tmp_path: Path) -> None:
    """The same for a sink's queue (text formats, the flow log, the pure build): the records
    still queued are taken off and counted failed; the batch the blocked write holds is
    counted by the writer when it returns."""
    fifo = tmp_path / "a.fifo"
    sink = LineSink("flow_log", LogSink(kind="file", path=str(fifo), flush_interval_ms=10),
                    render_json)
    with _fifo_nobody_reads(fifo) as held:
        for i in range(10):  # before the writer runs: its first batch takes the ten
            sink.offer({"n": i}, 0)
        sink.start()
        await _until(lambda: not sink._queue)
        await asyncio.sleep(0.05)  # into its write, blocked
        for i in range(10, 15):
            sink.offer({"n": i}, 0)
        await sink.close(deadline=0.2)
        assert sink._writer.is_alive()
        stats = sink.stats
        assert (stats.offered, stats.written, stats.failed, stats.dropped) == (15, 0, 5, 0)
        assert not sink._queue
        got = await asyncio.get_running_loop().run_in_executor(None, _read_lines, held, 10)
        await _until(lambda: not sink._writer.is_alive())
    assert [json.loads(line)["n"] for line in got.lstrip(b".").splitlines()] == list(range(10))
    assert (stats.offered, stats.written, stats.failed, stats.dropped) == (15, 10, 5, 0)


async def test_a_moved_file_is_left_within_a_second_while_the_writer_serves(
        tmp_path: Path) -> None:
    """logrotate moves the file away and the sink starts a new one within a second
    (docs/observability/logs.md): `_open` looks at the path at most once a second, before a
    write.  A writer in `serve` (ADR 0082) writes every half it is handed to the descriptor it
    was given, for up to a flush interval (here five seconds, up to a minute): looked at only
    between serves, the moved file took the lines of the whole interval.  Lines made a second
    and a bit after the move must be in the new file."""
    from tulle.dataplane.telemetry.access_record import NATIVE_LINE
    from tulle.dataplane.telemetry.sinks import REOPEN_CHECK

    if NATIVE_LINE is None:
        pytest.skip("the C line batch is not in use (TULLE_PURE or not built)")
    from tulle.dataplane.telemetry import _aline

    path = tmp_path / "a.log"
    sink = LineSink("access_log", LogSink(kind="file", path=str(path), queue_size=10_000,
                                          flush_interval_ms=5000), render_json)
    batch = _aline.Lines(10_000, wake_bytes=1024)  # a half handed over every ~5 lines
    sink.use_batch(batch)
    sink.start()
    await _until(lambda: batch.serving)  # the file opened, the writer serving
    pad = b"x" * 200
    moved = tmp_path / "a.log.1"
    late: set[int] = set()
    i = 0
    start = time.monotonic()
    moved_at = start + 0.2
    while time.monotonic() < moved_at + 2 * REOPEN_CHECK:
        now = time.monotonic()
        if now >= moved_at and not moved.exists():
            path.rename(moved)  # logrotate's default `create`: move away, a new file expected
            moved_at = time.monotonic()
        elif now > moved_at + REOPEN_CHECK + 0.3:
            late.add(i)
        sink.took(batch.add(b'{"n":%d,"pad":"%s"}\n' % (i, pad)))
        i += 1
        await asyncio.sleep(0.002)
    await sink.close()
    assert (sink.stats.offered, sink.stats.written, sink.stats.failed) == (i, i, 0)
    old = {json.loads(line)["n"] for line in moved.read_bytes().splitlines()}
    new = {json.loads(line)["n"] for line in path.read_bytes().splitlines()} if path.exists() else set()
    assert old | new == set(range(i)) and not old & new
    assert late and not late & old, sorted(late & old)[:5]


async def test_a_half_filled_while_the_other_is_written_is_written_when_that_write_ends() -> None:
    """The loop's thread fills a half while the writer is still writing the one it was handed
    (ADR 0082): that half cannot be handed over then, and waited for a later line to hand it
    over; after a burst no line comes, and it waited for the end of the writer's `serve`, a
    whole flush interval (here a minute), though it had called for a write.  Now it is written
    once the other's write ends.  A pipe of one page that blocks (read by the test once both
    halves are full) holds the writer in the first half's write."""
    from tulle.dataplane.telemetry.access_record import NATIVE_LINE

    if NATIVE_LINE is None:
        pytest.skip("the C line batch is not in use (TULLE_PURE or not built)")
    from tulle.dataplane.telemetry import _aline

    line = b'{"pad":"%s"}\n' % (b"x" * 1000)  # 1,011 bytes: nine reach the wake
    with _stdout_a_full_pipe(blocking=True) as r:
        sink = LineSink("access_log", LogSink(queue_size=10_000, flush_interval_ms=60_000),
                        render_json)
        batch = _aline.Lines(10_000, wake_bytes=8192)
        sink.use_batch(batch)
        sink.start()
        await _until(lambda: batch.serving)
        for _ in range(9):  # handed over at the ninth
            sink.took(batch.add(line))
        await _until(lambda: batch.writing)  # 4 KiB of it in the pipe, the rest waits
        for _ in range(9):  # the other half reaches its wake too: nothing to hand it to
            sink.took(batch.add(line))
        assert len(batch) == 18
        early = await asyncio.get_running_loop().run_in_executor(None, _read_lines, r, 18)
        await sink.close()  # (writes what is left, so that the test ends clean either way)
        rest = _read_lines(r, 18 - early.count(b"\n"))
    assert early == line * 18, (early.count(b"\n"), "lines before close, the rest at close")
    assert rest == b""
    assert (sink.stats.offered, sink.stats.written, sink.stats.failed) == (18, 18, 0)
