"""`_aline.Lines`, the JSON line sink's C batch (ADR 0080), on its own: the lines it writes are
the encoder's, its bound drops without encoding, its wake signal comes once per half, a write
empties one half while the other takes lines (a real pipe, a real writer thread), a failed write
loses and reports its lines (and hands over the rest of a line it stopped inside), a burst's
room is given back; a batch is made once, and written to a descriptor, never a bool.  `serve`
(ADR 0082): a half handed over and written while the loop keeps the GIL, and one that filled
while the other was written not left waiting for a next line."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from typing import Any

import pytest

from tulle.dataplane.telemetry.access_record import NATIVE_LINE, encode_line, line_batch

pytestmark = pytest.mark.skipif(
    NATIVE_LINE is None, reason="the C line encoder is not in use (TULLE_PURE or not built)")

LINE_VALUES = (1_764_787_465_335_000_000, b"GET", b"/a?b=\"c\"\x01\xe9", "HTTP/1.1", 200,
               "UF,URX", None, 0, 1024, 123, 100, 50, "127.0.0.1:18081", "origin", "rt/any/0",
               1, b"a71b08a2", None, b"web:80", b"curl/8", b"10.0.0.1, 127.0.0.1", "[::1]:5000",
               None, "spiffe://cluster.local/ns/a/sa/b", None, "outbound", "bench", "allow:p")
"""One record's values as the access log hands them over (`access_record.access_line`)."""


def _lines(max_lines: int = 100, wake: int = 65536) -> Any:
    from tulle.dataplane.telemetry import _aline

    return _aline.Lines(max_lines, wake_bytes=wake)


def _drain(batch: Any) -> bytes:
    """The batch written by itself to a file, and what the file got."""
    with tempfile.TemporaryFile() as f:
        count, err = batch.write(f.fileno())
        assert err == 0
        f.seek(0)
        out = f.read()
    assert out.count(b"\n") == count
    return out


def test_the_lines_are_the_encoders_lines_in_order() -> None:
    assert NATIVE_LINE is not None
    batch = _lines()
    other = (1_764_787_465_335_999_999, *LINE_VALUES[1:4], 503, *LINE_VALUES[5:])
    assert [batch.access(*LINE_VALUES), batch.access(*other)] == [1, 1]
    assert batch.add(b'{"ready":1}\n') == 1
    assert len(batch) == 3
    expected = NATIVE_LINE(*LINE_VALUES) + NATIVE_LINE(*other) + b'{"ready":1}\n'
    assert batch.pending_bytes() == len(expected)
    assert _drain(batch) == expected
    assert (len(batch), batch.pending_bytes()) == (0, 0)
    assert batch.write(1) == (0, 0)  # nothing held: nothing written


def test_a_record_the_c_encoder_refers_is_the_fallbacks_line() -> None:
    """A bool where a count goes: msgspec spells it `true`; the C encoder hands it over."""
    batch = _lines()
    odd: list[Any] = list(LINE_VALUES)
    odd[15] = True
    assert batch.access(*odd) == 1
    assert _drain(batch) == encode_line(*odd)


def test_a_value_of_the_wrong_type_raises_and_holds_nothing() -> None:
    batch = _lines()
    bad: list[Any] = list(LINE_VALUES)
    bad[4] = 2.5  # a status as a float
    with pytest.raises(TypeError, match="response_code"):
        batch.access(*bad)
    with pytest.raises(TypeError, match="arguments"):
        batch.access(*LINE_VALUES[:-1])
    with pytest.raises(TypeError):
        batch.add("a str")
    assert (len(batch), batch.pending_bytes()) == (0, 0)


def test_the_bound_drops_a_line_without_encoding_it() -> None:
    batch = _lines(max_lines=2)
    assert [batch.access(*LINE_VALUES) for _ in range(3)] == [1, 1, 0]
    bad: list[Any] = list(LINE_VALUES)
    bad[4] = 2.5
    assert batch.access(*bad) == 0  # full: not even looked at
    assert batch.add(b"x\n") == 0
    assert len(batch) == 2
    assert batch.clear() == 2 and len(batch) == 0
    assert batch.access(*LINE_VALUES) == 1
    batch.seal()
    assert batch.access(*LINE_VALUES) == 0 and len(batch) == 1


def test_the_wake_signal_comes_once_when_a_half_reaches_its_bytes() -> None:
    assert NATIVE_LINE is not None
    size = len(NATIVE_LINE(*LINE_VALUES))
    batch = _lines(wake=size * 3)
    got = [batch.access(*LINE_VALUES) for _ in range(6)]
    assert got == [1, 1, 2, 1, 1, 1]
    _drain(batch)  # the other half is now the active one, and empty
    assert [batch.access(*LINE_VALUES) for _ in range(4)] == [1, 1, 2, 1]


def test_lines_go_on_into_the_other_half_while_one_is_written() -> None:
    """The writer blocks in a write to a full pipe with the GIL released; this thread keeps
    appending, a second writer is refused, and after the reader drains the pipe each line
    arrives exactly once, in order."""
    batch = _lines(max_lines=10_000)
    r, w = os.pipe()
    try:
        first = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 1000) for i in range(200)]  # > a pipe
        for line in first:
            assert batch.add(line) in (1, 2)
        result: list[tuple[int, int]] = []
        writer = threading.Thread(target=lambda: result.append(batch.write(w)))
        writer.start()
        deadline = time.monotonic() + 5
        while not batch.writing and time.monotonic() < deadline:  # until the halves swapped
            time.sleep(0.001)
        time.sleep(0.05)
        assert batch.writing and writer.is_alive()  # blocked on the full pipe, GIL released
        second = [b'{"m":%d}\n' % i for i in range(50)]
        for line in second:
            assert batch.add(line) == 1
        with pytest.raises(RuntimeError, match="in progress"):
            batch.write(w)
        got = b""
        want = len(b"".join(first))
        while len(got) < want:
            got += os.read(r, 1 << 16)
        writer.join(5)
        assert not writer.is_alive() and result == [(200, 0)] and not batch.writing
        assert got == b"".join(first)
        assert len(batch) == 50
        assert batch.write(w) == (50, 0)
        assert os.read(r, 1 << 16) == b"".join(second)
    finally:
        os.close(r)
        os.close(w)


def test_a_failed_write_reports_its_lines_and_empties_the_half() -> None:
    batch = _lines()
    for _ in range(3):
        batch.access(*LINE_VALUES)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert batch.write(w) == (3, errno.EBADF)  # a closed descriptor
    assert len(batch) == 0 and batch.pending_bytes() == 0


def test_a_bursts_room_is_given_back_once_written() -> None:
    batch = _lines(max_lines=1_000_000)
    for _ in range(2000):  # ~1.2 MB in one half
        batch.access(*LINE_VALUES)
    assert batch.room() > 1 << 20
    with open(os.devnull, "wb") as null:
        assert batch.write(null.fileno()) == (2000, 0)
    assert batch.room() == 0  # the small other half was never touched
    batch.access(*LINE_VALUES)
    assert 0 < batch.room() <= 64 * 1024


def test_line_batch_is_bounded_as_asked() -> None:
    batch = line_batch(2)
    assert batch is not None
    assert [batch.access(*LINE_VALUES) for _ in range(3)] == [1, 1, 0]


def test_a_huge_record_is_written_whole_and_its_room_given_back() -> None:
    """A path as long as the header limits allow, every byte one to escape (six bytes each):
    the half grows for it, the line is the encoder's, and the room goes once it is written."""
    batch = _lines()
    big: list[Any] = list(LINE_VALUES)
    big[2] = b"/" + b"\x01" * (1 << 20)
    assert batch.access(*big) == 2  # one line past the wake size
    assert batch.room() > 6 << 20
    assert _drain(batch) == encode_line(*big)
    assert batch.room() == 0


def test_a_sealed_batch_gives_its_room_back() -> None:
    """A sealed batch (a closed sink's) takes no more lines: its last write frees the half
    written, and `clear` (what `close` calls last) frees both; an open batch keeps its room
    for the lines to come."""
    batch = _lines()
    batch.access(*LINE_VALUES)
    _drain(batch)  # one half written, its room kept
    batch.access(*LINE_VALUES)  # the other half takes a line
    held = batch.room()
    assert held > 0
    assert batch.clear() == 1 and batch.room() == held  # open: kept
    batch.access(*LINE_VALUES)
    batch.seal()
    assert batch.clear() == 1 and batch.room() == 0
    assert batch.access(*LINE_VALUES) == 0 and batch.room() == 0
    other = _lines()
    for _ in range(2):
        other.access(*LINE_VALUES)
        _drain(other)  # both halves hold room
    other.access(*LINE_VALUES)
    other.seal()
    assert _drain(other).count(b"\n") == 1
    assert other.room() == held // 2  # the half just written freed, the other kept
    assert other.clear() == 0 and other.room() == 0


def test_a_batch_is_made_once_a_second_init_is_refused() -> None:
    """`__init__` again would set the bound anew on a batch in use: a sealed batch (a closed
    sink's, bound 0) would take lines again that no writer will ever write, and an open one
    would change its bound and wake size under its writer.  It is refused; the batch is as
    it was."""
    sealed = _lines(max_lines=5)
    sealed.seal()
    with pytest.raises(RuntimeError, match="made once"):
        sealed.__init__(5)
    assert sealed.add(b"x\n") == 0 and len(sealed) == 0  # still sealed
    bound = _lines(max_lines=1)
    with pytest.raises(RuntimeError, match="made once"):
        bound.__init__(100, wake_bytes=1)
    assert [bound.add(b"x\n"), bound.add(b"y\n")] == [1, 0]  # the first bound and wake hold


def test_write_takes_a_descriptor_not_a_bool_nor_a_negative_number() -> None:
    """A bool is an int to Python's parser: `write(True)` wrote the lines to fd 1.  It is
    refused before the halves swap, and so is a negative descriptor; the lines stay held."""
    batch = _lines()
    batch.add(b"x\n")
    with pytest.raises(TypeError, match="bool"):
        batch.write(True)
    with pytest.raises(TypeError, match="bool"):
        batch.write(False)
    with pytest.raises(ValueError, match="negative"):
        batch.write(-1)
    assert len(batch) == 1 and not batch.writing
    assert _drain(batch) == b"x\n"


def _full_pipe_after(capacity: int = 4096) -> tuple[int, int]:
    """A pipe of one page whose write end does not block: a write of more than it holds takes
    part, the next fails with EAGAIN (a parent's pipe set non-blocking; a full disk's ENOSPC
    ends a write the same way)."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, capacity)
    os.set_blocking(w, False)
    return r, w


def test_a_write_stopped_inside_a_line_hands_over_the_rest_of_that_line() -> None:
    """8 lines of ~1 KB into a pipe that holds 4 KiB: the write ends inside the fifth, then
    EAGAIN.  The half is lost and reported as before, and the rest of the torn line is handed
    over once (`torn`), so that the writer finishes the line before anything else goes after
    it.  A write that stopped between lines, or did not stop, tears nothing."""
    batch = _lines()
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 1000) for i in range(8)]
    for line in lines:
        batch.add(line)
    r, w = _full_pipe_after(4096)
    try:
        assert batch.write(w) == (8, errno.EAGAIN)
        assert (len(batch), batch.pending_bytes()) == (0, 0)
        head = os.read(r, 1 << 16)
        assert len(head) == 4096 and head.count(b"\n") == 4
        rest = batch.torn()
        assert head + rest == b"".join(lines[:5])  # the fifth line, whole
        assert batch.torn() == b""  # handed over once
        batch.add(b"y" * 4095 + b"\n")  # fills the pipe exactly: the next line finds no room
        batch.add(b"z\n")
        assert batch.write(w) == (2, errno.EAGAIN) and batch.torn() == b""
        assert os.read(r, 1 << 16) == b"y" * 4095 + b"\n"
        batch.add(b"z\n")
        assert batch.write(w) == (1, 0) and batch.torn() == b""
        assert os.read(r, 1 << 16) == b"z\n"
    finally:
        os.close(r)
        os.close(w)


def test_a_torn_line_not_taken_is_the_last_writes_only() -> None:
    """`torn` answers for the last write: a later write (even of nothing) forgets an older
    rest nobody took, and a line without its newline (`add` does not check) is torn up to the
    end of the half."""
    batch = _lines()
    batch.add(b"a" * 5000)  # no newline
    r, w = _full_pipe_after(4096)
    try:
        assert batch.write(w) == (1, errno.EAGAIN)
        assert os.read(r, 1 << 16) == b"a" * 4096
        assert batch.write(w) == (0, 0)
        assert batch.torn() == b""
        batch.add(b"b" * 5000)
        assert batch.write(w) == (1, errno.EAGAIN)
        assert batch.torn() == b"b" * (5000 - 4096)
    finally:
        os.close(r)
        os.close(w)


# -- `serve`: the halves handed over to a writer that waits without the GIL (ADR 0082) --------


def _serving(batch: Any, fd: int, seconds: float = 10.0) -> tuple[threading.Thread,
                                                                  list[tuple[int, int, int]]]:
    """A writer thread in `batch.serve(fd, seconds)`, returned once it is in."""
    got: list[tuple[int, int, int]] = []
    writer = threading.Thread(target=lambda: got.append(batch.serve(fd, seconds)), daemon=True)
    writer.start()
    deadline = time.monotonic() + 5
    while not batch.serving and time.monotonic() < deadline:
        time.sleep(0.001)
    assert batch.serving
    return writer, got


class _GilHeld:
    """This thread keeps the GIL (a switch interval of a minute) until the block ends: another
    thread that needs it waits, one that does not goes on."""

    def __enter__(self) -> None:
        import sys

        self.was = sys.getswitchinterval()
        sys.setswitchinterval(60.0)

    def __exit__(self, *exc: object) -> None:
        import sys

        sys.setswitchinterval(self.was)


def _spin(until: Any, seconds: float = 2.0) -> bool:
    """`until()` polled without ever letting the GIL go (no sleep, no system call)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until():
            return True
    return False


def test_a_half_that_calls_for_a_write_is_written_while_the_loop_keeps_the_gil() -> None:
    """The half is handed over in the `add` that fills it and the writer writes it without the
    GIL: while this thread never lets the GIL go, the half is written and emptied.  (A writer
    that had to take the GIL to swap the halves, as `write` does, could not have.)"""
    batch = _lines(max_lines=100_000, wake=4096)
    with tempfile.TemporaryFile() as f:
        writer, got = _serving(batch, f.fileno())
        lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 200) for i in range(40)]  # ~8.6 KB
        with _GilHeld():
            results = [batch.add(line) for line in lines]
            assert 2 not in results  # handed over in `add`: nothing for a sink to wake
            handed = len(batch)
            # written, GIL never let go (10 s: the writer thread needs a CPU, and a busy
            # two-CPU machine may give it none for a while; a writer needing the GIL never
            # gets it however long this spins)
            assert _spin(lambda: len(batch) < handed, 10.0)
            assert batch.room() <= 2 * 16 * 1024
        batch.seal()
        writer.join(5)
        assert not writer.is_alive()
        assert got[0][1:] == (0, 0) and got[0][0] > 0
        count, err = batch.write(f.fileno())  # what stayed below the wake, after
        assert err == 0 and got[0][0] + count == 40
        f.seek(0)
        assert f.read() == b"".join(lines)


def test_serve_returns_at_its_time_on_a_nudge_and_on_a_seal() -> None:
    batch = _lines()
    with open(os.devnull, "wb") as null:
        start = time.monotonic()
        assert batch.serve(null.fileno(), 0.2) == (0, 0, 0)
        assert 0.15 <= time.monotonic() - start < 2
        writer, got = _serving(batch, null.fileno(), 30)
        batch.nudge()
        writer.join(2)
        assert not writer.is_alive() and got == [(0, 0, 0)] and not batch.serving
        writer, got = _serving(batch, null.fileno(), 30)
        batch.seal()
        writer.join(2)
        assert not writer.is_alive() and got == [(0, 0, 0)]
        with pytest.raises(TypeError):
            batch.serve(True, 1.0)
        with pytest.raises(ValueError):
            batch.serve(null.fileno(), 0)


def test_a_failed_serve_reports_the_half_and_hands_over_its_torn_line() -> None:
    batch = _lines(wake=4096)
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 1000) for i in range(8)]
    r, w = _full_pipe_after(4096)
    try:
        writer, got = _serving(batch, w)
        for line in lines:
            batch.add(line)  # the fifth reaches 4 KiB (5,080 bytes): handed over, five lines
        writer.join(5)
        assert not writer.is_alive()
        assert got == [(0, 5, errno.EAGAIN)]
        head = os.read(r, 1 << 16)
        assert len(head) == 4096  # the pipe's page, ending inside the fifth line
        assert head + batch.torn() == b"".join(lines[:5])
        assert len(batch) == 3  # the lines after the hand-over, still held
    finally:
        os.close(r)
        os.close(w)


def test_a_half_handed_over_and_not_yet_taken_is_written_first_or_cleared() -> None:
    """A writer whose `serve` ran out of time but has not got the GIL back to return is still
    serving: the loop's thread hands it a half it will not take.  `write` takes that half
    first (the older lines), then the active one; `clear` drops both."""
    for how in ("write", "clear"):
        batch = _lines(wake=1000)
        with tempfile.TemporaryFile() as f:
            older = [b'{"old":%d,"pad":"%s"}\n' % (i, b"x" * 300) for i in range(4)]
            newer = [b'{"new":%d}\n' % i for i in range(3)]
            with _GilHeld():
                writer, got = _serving(batch, f.fileno(), 0.05)
                time.sleep(0)  # (the writer is in; its time runs out while this thread spins)
                _spin(lambda: False, 0.3)
                assert batch.serving  # out of time, waiting for the GIL to return
                for line in older:
                    batch.add(line)  # the fourth reaches 1000 bytes: handed over, not taken
                for line in newer:
                    batch.add(line)
                assert len(batch) == 7
                if how == "clear":
                    assert batch.clear() == 7
                    assert (len(batch), batch.pending_bytes()) == (0, 0)
            writer.join(5)
            assert not writer.is_alive() and got == [(0, 0, 0)]
            if how == "write":
                assert batch.write(f.fileno()) == (4, 0)  # the half handed over: older first
                assert batch.write(f.fileno()) == (3, 0)
                f.seek(0)
                assert f.read() == b"".join(older + newer)
            assert batch.write(f.fileno()) == (0, 0)


def test_a_half_filled_while_the_other_was_written_gets_its_write_without_a_next_line() -> None:
    """The half the loop's thread fills while the writer writes the other cannot be handed over
    then; it was left for a later line to hand over, and after a burst none comes: `serve` slept
    to its end (a flush interval) with a half that had called for a write.  Now `serve`, once
    the other half is written, waits a moment for that line and returns without one, for its
    caller to write the half (`write`).  A pipe of one page that blocks holds the writer."""
    batch = _lines(wake=4096)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 1000) for i in range(10)]
    try:
        writer, got = _serving(batch, w, 30)
        for line in lines[:5]:
            batch.add(line)  # the fifth reaches 4 KiB: handed over
        deadline = time.monotonic() + 5
        while not batch.writing and time.monotonic() < deadline:
            time.sleep(0.001)
        assert batch.writing  # 4 KiB of it in the pipe, the rest waits
        for line in lines[5:]:
            assert batch.add(line) == 1  # reaches 4 KiB too: nothing it can be handed to yet
        head = b""
        while head.count(b"\n") < 5:
            head += os.read(r, 1 << 16)  # the first half's write ends
        writer.join(2)  # not the 30 s of its time
        returned = not writer.is_alive()
        batch.seal()  # (a writer still in `serve` returns: the test ends either way)
        writer.join(5)
        assert returned and got == [(5, 0, 0)]
        wrote: list[tuple[int, int]] = []  # (5 KB for the pipe: read while it is written)
        last = threading.Thread(target=lambda: wrote.append(batch.write(w)), daemon=True)
        last.start()
        tail = b""
        while tail.count(b"\n") < 5:
            tail += os.read(r, 1 << 16)
        last.join(5)
        assert wrote == [(5, 0)] and head + tail == b"".join(lines)
    finally:
        os.close(r)
        os.close(w)
