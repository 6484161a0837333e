"""The struct record of JSON access logs gives the dict record's line byte for byte (ADR 0062),
and the C line encoder gives the struct's (ADR 0076)."""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
import pytest

from tulle.dataplane.telemetry.access_log import _ms
from tulle.dataplane.telemetry.access_record import (
    NATIVE_LINE,
    AccessRecord,
    access_line,
    encode_line,
    json_lines,
    record_dict,
)
from tulle.dataplane.telemetry.logformat import render_json
from tulle.dataplane.telemetry.starttime import start_time
from tulle.proxyconfig.log_fields import ACCESS_FIELDS

VALUES = ("2026-12-03T18:47:25.335Z", "GET", "/a?b=\"c\"\x01\u00e9", "HTTP/1.1", 200, "UF,URX",
          None, 0, 1024, 0.123, 0.1, 0.05, "127.0.0.1:18081", "origin", "rt/any/0", 1,
          "a71b08a2", None, "web:80", "curl/8", "10.0.0.1, 127.0.0.1", "[::1]:5000", None,
          "spiffe://cluster.local/ns/a/sa/b", None, "outbound", "bench", "allow:p")


def test_the_struct_has_the_access_fields_in_their_order() -> None:
    assert AccessRecord.__struct_fields__ == ACCESS_FIELDS


def test_a_struct_line_is_the_dict_line() -> None:
    as_dict = dict(zip(ACCESS_FIELDS, VALUES, strict=True))
    record = AccessRecord(*VALUES)
    assert render_json(record) == render_json(as_dict)
    lines = [record, AccessRecord(*VALUES)]
    assert json_lines(lines) == (render_json(as_dict) + "\n").encode() * 2
    assert msgspec.json.decode(json_lines([record]).strip()) == as_dict


def test_a_struct_is_no_work_for_the_cycle_collector() -> None:
    import gc

    assert not gc.is_tracked(AccessRecord(*VALUES))


def test_milliseconds_round_as_round_did() -> None:
    rng = random.Random(12)
    for _ in range(200_000):
        d = rng.random() * rng.choice((1e-5, 1e-3, 0.1, 1.0, 30.0, 3600.0))
        assert _ms(d) == round(d * 1000, 3), d
    assert _ms(0.0) == 0.0


def test_start_time_is_the_same_text_from_the_millisecond_cache() -> None:
    base = time.time_ns()
    for step in (0, 1, 999_999, 1_000_000, 7_654_321, 1_000_000_000, 86_400 * 10**9 + 5):
        ns = base + step
        sec, rest = divmod(ns, 1_000_000_000)
        want = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)) + f"{rest // 1_000_000:03d}Z"
        assert start_time(ns) == want
        assert start_time(ns) == want  # the second read is the cached one


def test_the_proxys_own_trace_id_short_cut_gives_the_same_id() -> None:
    from tulle.dataplane.telemetry.access_log import trace_id_of

    tid = b"4bf92f3577b34da6a3ce929d0e0e4736"
    cases = [
        [(b"traceparent", b"00-" + tid + b"-00f067aa0ba902b7-01")],
        [(b"traceparent", b"00-" + tid.upper() + b"-00f067aa0ba902b7-01")],
        [(b"traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")],
        [(b"b3", tid + b"-00f067aa0ba902b7-1"), (b"traceparent", b"00-" + tid + b"-0-0")],
        [(b"traceparent", b"00-zz" + tid[2:] + b"-00f067aa0ba902b7-01")],
        [(b"x-b3-traceid", tid[:16])],
    ]
    for headers in cases:
        for known in (tid, b"0" * 32, b""):
            assert trace_id_of(headers, known) == trace_id_of(headers), (headers, known)
    assert trace_id_of(cases[0], tid) == tid.decode()


# -- the line as `access_line` writes it (ADR 0076) -------------------------------------------

LINE_VALUES = ("2026-12-03T18:47:25.335Z", b"GET", b"/a?b=\"c\"\x01\xe9", "HTTP/1.1", 200,
               "UF,URX", None, 0, 1024, 123, 100, 50, "127.0.0.1:18081", "origin", "rt/any/0",
               1, b"a71b08a2", None, b"web:80", b"curl/8", b"10.0.0.1, 127.0.0.1", "[::1]:5000",
               None, "spiffe://cluster.local/ns/a/sa/b", None, "outbound", "bench", "allow:p")
"""`VALUES` as the access log hands them over: header fields as bytes, durations in µs."""

native_only = pytest.mark.skipif(NATIVE_LINE is None,
                                 reason="the C line encoder is not in use (TULLE_PURE or not built)")


def test_the_line_is_the_structs_line() -> None:
    line = access_line(*LINE_VALUES)
    assert line == encode_line(*LINE_VALUES) == json_lines([AccessRecord(*VALUES)])
    assert json_lines([line, line]) == line * 2  # a batch of lines is joined


def test_a_start_time_in_nanoseconds_is_written_as_its_text() -> None:
    ns = 1_764_787_465_335_999_999  # 2025-12-03T18:44:25.335999999Z: milliseconds truncated
    assert start_time(ns) == "2025-12-03T18:44:25.335Z"
    values = (ns, *LINE_VALUES[1:])
    as_text = (start_time(ns), *LINE_VALUES[1:])
    assert access_line(*values) == access_line(*as_text) == encode_line(*values)
    assert b'{"start_time":"2025-12-03T18:44:25.335Z",' in access_line(*values)
    assert record_dict(values)["start_time"] == "2025-12-03T18:44:25.335Z"


def test_a_start_time_in_the_second_before_the_epoch_has_its_date_in_a_fresh_process() -> None:
    """The first start time formatted (the clock as a new process has it) may be from the
    last second before 1970 (a clock set wrong; C hands these to the fallback): it once met
    the clock's -1 "nothing yet" and came out as "" or "500Z"."""
    from tulle.dataplane.telemetry import starttime

    for ns, text in ((-1, "1969-12-31T23:59:59.999Z"), (-1_000_000, "1969-12-31T23:59:59.999Z"),
                     (-500_000_000, "1969-12-31T23:59:59.500Z"),
                     (-1_000_000_000, "1969-12-31T23:59:59.000Z"),
                     (0, "1970-01-01T00:00:00.000Z")):
        starttime._clock.__init__()  # type: ignore[misc]  # as a new process has it
        assert start_time(ns) == text
        starttime._clock.__init__()  # type: ignore[misc]
        assert encode_line(ns, *LINE_VALUES[1:]) == access_line(ns, *LINE_VALUES[1:])
        assert f'{{"start_time":"{text}",'.encode() in access_line(ns, *LINE_VALUES[1:])


@native_only
def test_the_c_encoder_names_the_access_fields_in_their_order() -> None:
    from tulle.dataplane.telemetry import _aline

    assert _aline.FIELDS == ACCESS_FIELDS


def _text(rng: random.Random) -> str | bytes | None:
    kind = rng.randrange(3)
    if kind == 0:
        return None
    n = rng.randrange(12)
    if kind == 1:  # any byte: controls, quotes, backslashes, Latin-1's upper half
        return bytes(rng.randrange(256) for _ in range(n))
    return "".join(chr(rng.choice((rng.randrange(0x80), rng.randrange(0x80, 0x800),
                                   rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x110000))))
                   for _ in range(n))


@native_only
def test_the_c_encoder_writes_msgspecs_bytes_for_any_values() -> None:
    assert NATIVE_LINE is not None
    rng = random.Random(76)
    durations = (0, 1, 9, 10, 99, 100, 999, 1000, 1001, 1010, 1100, 2000, 123_456,
                 10**15 - 1, 2**53 // 1000)
    for _ in range(20_000):
        v: list[Any] = [_text(rng) for _ in range(28)]
        for i, default in ((0, "t"), (3, "HTTP/2"), (5, "-"), (25, "inbound"), (26, "l")):
            v[i] = v[i] if isinstance(v[i], str) else default
        if rng.random() < 0.5:  # the start time as the access log hands it over: nanoseconds
            v[0] = rng.choice((0, 999_999, 1_000_000, 59_999_999_999, rng.randrange(2**62),
                               rng.randrange(253402300800 * 10**9)))
        for i in (4, 7, 8, 15):
            v[i] = rng.choice((0, 200, rng.randrange(10**6), rng.randrange(-2**63, 2**63)))
        for i in (9, 10, 11):
            v[i] = rng.choice((*durations, rng.randrange(10**15), rng.randrange(10**7)))
        v[10] = v[10] if rng.random() < 0.8 else None
        v[11] = v[11] if rng.random() < 0.8 else None
        assert NATIVE_LINE(*v) == encode_line(*v), v


@native_only
def test_what_the_c_encoder_cannot_write_alike_goes_to_the_struct() -> None:
    assert NATIVE_LINE is not None
    import http

    from tulle.dataplane.telemetry import _aline

    referred: list[tuple[Any, ...]] = []

    def spy(*values: Any) -> bytes:  # the fallback, counting what reaches it
        referred.append(values)
        return encode_line(*values)

    _aline.set_fallback(spy)
    try:
        for i, value in ((9, 10**15), (9, -1), (10, 2**60), (11, -5), (4, 2**70), (7, -2**64),
                         (15, True), (4, http.HTTPStatus.OK),
                         (0, 2**63), (0, 253402300800 * 10**9), (0, -1),
                         (0, True), (0, http.HTTPStatus.OK)):  # an int subclass: the fallback's
            v: list[Any] = list(LINE_VALUES)
            v[i] = value
            referred.clear()
            assert NATIVE_LINE(*v) == encode_line(*v)
            assert len(referred) == 1, (i, value)  # written by the fallback, not by C
        last = list(LINE_VALUES)
        last[0] = 2**63 - 1  # the last nanosecond of 64 bits (2262-04-11): C writes it
        referred.clear()
        assert NATIVE_LINE(*last) == encode_line(*last) and not referred
    finally:
        _aline.set_fallback(encode_line)
    surrogate: list[Any] = list(LINE_VALUES)
    surrogate[26] = "listener-\udc80"  # a lone surrogate: msgspec refuses it, so the line too
    with pytest.raises(UnicodeEncodeError):
        encode_line(*surrogate)
    with pytest.raises(UnicodeEncodeError):
        NATIVE_LINE(*surrogate)
    with pytest.raises(TypeError):
        NATIVE_LINE(*LINE_VALUES[:-1])
    wrong: list[Any] = list(LINE_VALUES)
    wrong[1] = 3.5  # not a text field's type: a bug, never a line
    with pytest.raises(TypeError):
        NATIVE_LINE(*wrong)


@native_only
def test_a_fallback_that_replaces_itself_while_it_runs_is_not_freed_under_it() -> None:
    """The C encoder calls the fallback it holds; a `set_fallback` from inside that call drops
    the module's reference, so the call must hold its own: an `lru_cache` wrapper, which
    stores the result in its cache after its function returns, read itself freed (SIGSEGV).
    In a fresh process: the test's own must not lose its fallback, nor die with it."""
    import subprocess
    import sys

    code = (
        "import functools\n"
        "from tulle.dataplane.telemetry import _aline\n"
        "from tulle.dataplane.telemetry.access_record import encode_line\n"
        f"values = {list(LINE_VALUES)!r}\n"
        "values[9] = 10**15  # a duration the C encoder hands to the fallback\n"
        "def replacing(*fields):\n"
        "    _aline.set_fallback(encode_line)  # the running fallback's last reference goes\n"
        "    return encode_line(*fields)\n"
        "for _ in range(100):\n"
        "    _aline.set_fallback(functools.lru_cache(maxsize=None)(replacing))\n"
        "    assert _aline.access_line(*values) == encode_line(*values)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


@native_only
def test_a_huge_records_room_is_given_back() -> None:
    """A record as large as the header limits allow (~1 MiB of path) needs a ~6 MiB scratch
    room for its worst-case escaping; the encoder gives it back after that line instead of
    holding it for the process's life, and keeps a small one for the usual ~600 bytes."""
    from tulle.dataplane.telemetry import _aline

    assert NATIVE_LINE is not None
    NATIVE_LINE(*LINE_VALUES)
    assert 0 < _aline.scratch_size() <= 65536
    big: list[Any] = list(LINE_VALUES)
    big[2] = b"/" + b"\x01" * (1 << 20)  # each escapes to six bytes: the largest room
    line = NATIVE_LINE(*big)
    assert len(line) > 6 << 20 and line == encode_line(*big)
    assert _aline.scratch_size() == 0
    assert NATIVE_LINE(*LINE_VALUES) == encode_line(*LINE_VALUES)
    assert 0 < _aline.scratch_size() <= 65536


def test_del_and_the_c1_controls_are_escaped_in_a_json_line() -> None:
    # ADR 0099: U+0085 split a record for line readers; U+009B is a terminal's escape prefix.
    for ua in (b"probe\x85{\"forged\":1}\x9b2J\x7f", "probe\x85{\"forged\":1}\x9b2J\x7f"):
        v = list(LINE_VALUES)
        v[ACCESS_FIELDS.index("user_agent")] = ua
        line = access_line(*v)
        assert line == encode_line(*v)
        assert line.count(b"\n") == 1 and b"\xc2\x85" not in line and b"\x7f" not in line
        assert b"\xc2\x9b" not in line
        assert b'probe\\u0085{\\"forged\\":1}\\u009b2J\\u007f' in line
        assert line.decode().splitlines() == [line.decode().rstrip("\n")]
