"""The struct record of JSON access logs gives the dict record's line byte for byte (ADR 0062)."""

from __future__ import annotations

import random
import time

import msgspec

from tulle.dataplane.telemetry.access_log import _ms, start_time
from tulle.dataplane.telemetry.access_record import AccessRecord, json_lines
from tulle.dataplane.telemetry.logformat import render_json
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
