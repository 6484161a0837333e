"""W3C and B3 trace context: what is read, what is written, and what a hostile peer gets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.telemetry.tracing.propagation import (
    B3,
    B3_MULTI,
    NO_DECISION,
    W3C,
    extract,
    inject,
    parse_b3,
    parse_b3_multi,
    parse_traceparent,
)

T = b"4bf92f3577b34da6a3ce929d0e0e4736"
S = b"00f067aa0ba902b7"
P = b"a2fb4a1d1a96d312"


def test_w3c_traceparent_is_read_with_its_sampled_flag() -> None:
    got = parse_traceparent(b"00-" + T + b"-" + S + b"-01")
    assert got is not None and (got.trace_id, got.span_id, got.sampled) == (T, S, 1)
    got = parse_traceparent(b"00-" + T + b"-" + S + b"-00")
    assert got is not None and got.sampled == 0
    # Only bit 0 is the sampled flag; other bits do not make a request sampled.
    got = parse_traceparent(b"00-" + T + b"-" + S + b"-02")
    assert got is not None and got.sampled == 0


def test_a_future_version_is_read_by_its_first_fields() -> None:
    got = parse_traceparent(b"cc-" + T + b"-" + S + b"-01-what-the-future-holds")
    assert got is not None and got.trace_id == T
    assert parse_traceparent(b"cc-" + T + b"-" + S + b"-01x") is None


@pytest.mark.parametrize("value", [
    b"ff-" + T + b"-" + S + b"-01",                     # version ff is invalid
    b"00-" + b"0" * 32 + b"-" + S + b"-01",             # all-zero trace id
    b"00-" + T + b"-" + b"0" * 16 + b"-01",             # all-zero span id
    b"00-" + T.upper() + b"-" + S + b"-01",             # upper-case hex
    b"00-" + T + b"-" + S + b"-01-extra",               # version 00 has exactly 4 fields
    b"00-" + T[:-1] + b"-" + S + b"-01",                # short trace id
    b"00-" + T + b"-" + S + b"-0g",                     # not hex
    b"00-" + T + b"-" + S + b"-01\r\nx-evil: 1",        # CR/LF injection
    b"00_" + T + b"_" + S + b"_01",
    b"",
    b"00-" + T + b"-" + S + b"-01" + b" " * 5000,       # oversized
])
def test_a_malformed_traceparent_is_ignored(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_b3_single_header_forms() -> None:
    got = parse_b3(T + b"-" + S + b"-1-" + P)
    assert got is not None and (got.trace_id, got.span_id, got.sampled) == (T, S, 1)
    got = parse_b3(T + b"-" + S)
    assert got is not None and got.sampled == NO_DECISION
    got = parse_b3(T[16:] + b"-" + S + b"-d")  # 64-bit trace id, debug
    assert got is not None and got.trace_id == b"0" * 16 + T[16:] and got.sampled == 1
    got = parse_b3(b"0")
    assert got is not None and got.trace_id == b"" and got.sampled == 0
    for bad in (b"2", T + b"-" + S + b"-x", T + b"-" + S + b"-1-" + P + b"-", b"0" * 32 + b"-" + S,
                T + b"-" + S + b"\n", T[:20] + b"-" + S, b"true"):
        assert parse_b3(bad) is None, bad


def test_b3_multi_headers() -> None:
    got = parse_b3_multi(T, S, b"1", b"")
    assert got is not None and (got.trace_id, got.span_id, got.sampled) == (T, S, 1)
    got = parse_b3_multi(T[16:], S, b"", b"1")  # flags 1: debug, sampled
    assert got is not None and got.trace_id == b"0" * 16 + T[16:] and got.sampled == 1
    got = parse_b3_multi(b"", b"", b"0", b"")  # a decision alone
    assert got is not None and got.trace_id == b"" and got.sampled == 0
    got = parse_b3_multi(T, b"nothex!!nothex!!", b"true", b"")  # bad ids, decision kept
    assert got is not None and got.trace_id == b"" and got.sampled == 1
    assert parse_b3_multi(T, b"", b"", b"") is None
    assert parse_b3_multi(T + b"00", S, b"maybe", b"") is None


def test_extract_prefers_w3c_then_b3_then_b3_multi() -> None:
    tp = (b"traceparent", b"00-" + T + b"-" + S + b"-01")
    b3 = (b"b3", b"1" * 32 + b"-" + b"2" * 16 + b"-0")
    multi = [(b"x-b3-traceid", b"3" * 32), (b"x-b3-spanid", b"4" * 16)]
    got = extract([tp, b3, *multi])
    assert got is not None and got.trace_id == T
    got = extract([(b"traceparent", b"garbage"), b3, *multi])
    assert got is not None and got.trace_id == b"1" * 32 and got.sampled == 0
    got = extract(multi)
    assert got is not None and got.trace_id == b"3" * 32 and got.sampled == NO_DECISION
    got = extract([(b"b3", b"0"), *multi])  # b3's decision, x-b3's ids
    assert got is not None and got.trace_id == b"3" * 32
    got = extract([(b"b3", b"1")])
    assert got is not None and got.trace_id == b"" and got.sampled == 1
    assert extract([(b"host", b"a"), (b"x-request-id", b"r")]) is None


def test_tracestate_goes_with_a_valid_traceparent_only_and_within_limits() -> None:
    tp = (b"traceparent", b"00-" + T + b"-" + S + b"-01")
    got = extract([tp, (b"tracestate", b"a=1"), (b"tracestate", b"b=2")])
    assert got is not None and got.tracestate == b"a=1,b=2"
    got = extract([(b"tracestate", b"a=1"), (b"traceparent", b"bad")])
    assert got is None
    got = extract([tp, (b"tracestate", b"k=" + b"v" * 600)])
    assert got is not None and got.tracestate == b""
    got = extract([tp, (b"tracestate", b",".join(b"k%d=v" % i for i in range(40)))])
    assert got is not None and got.tracestate == b""
    got = extract([tp, (b"tracestate", b"a=\x01")])
    assert got is not None and got.tracestate == b""


@pytest.mark.parametrize("value", [b"foo=1,foo=2", b"FOO=1", b"a=b=c", b"=x", b"a=", b"a b=c",
                                   b"1a=x", b"a@B=x", b"a=\x7f", b"a=" + b"v" * 257])
def test_a_tracestate_outside_the_w3c_grammar_is_dropped(value: bytes) -> None:
    got = extract([(b"traceparent", b"00-" + T + b"-" + S + b"-01"), (b"tracestate", value)])
    assert got is not None and got.trace_id == T and got.tracestate == b""


@pytest.mark.parametrize("value", [b"congo=t61rcWkgMzE", b" a=1 , b=2 ", b"a=1,,b=2",
                                   b"1a@sys=x y", b"a-b_c*d/e=~!", b"k=" + b"v" * 256])
def test_a_tracestate_within_the_w3c_grammar_is_kept(value: bytes) -> None:
    got = extract([(b"traceparent", b"00-" + T + b"-" + S + b"-01"), (b"tracestate", value)])
    assert got is not None and got.tracestate == value.strip(b" \t")


def test_a_field_given_twice_is_no_context() -> None:
    tp = (b"traceparent", b"00-" + T + b"-" + S + b"-01")
    assert extract([tp, tp]) is None
    b3 = (b"b3", T + b"-" + S + b"-1")
    assert extract([b3, b3]) is None
    # Twice in one format leaves the others: here B3 multi is read.
    got = extract([tp, tp, (b"x-b3-traceid", T), (b"x-b3-spanid", S)])
    assert got is not None and got.trace_id == T
    got = extract([(b"x-b3-traceid", T), (b"x-b3-spanid", S), (b"x-b3-spanid", P)])
    assert got is None
    got = extract([(b"x-b3-sampled", b"1"), (b"x-b3-sampled", b"0")])
    assert got is None


def test_inject_writes_the_configured_formats_and_replaces_what_came() -> None:
    headers = [(b"host", b"h"), (b"traceparent", b"00-" + b"9" * 32 + b"-" + b"8" * 16 + b"-01"),
               (b"tracestate", b"old=1"), (b"b3", b"stale"), (b"x-b3-sampled", b"1")]
    inject(headers, W3C, T, S, P, True, b"a=1")
    assert headers == [(b"host", b"h"), (b"b3", b"stale"), (b"x-b3-sampled", b"1"),
                       (b"traceparent", b"00-" + T + b"-" + S + b"-01"),
                       (b"tracestate", b"a=1")]
    headers = [(b"b3", b"stale"), (b"x-b3-traceid", b"x"), (b"x-b3-parentspanid", b"y")]
    inject(headers, B3 | B3_MULTI, T, S, P, False, b"")
    assert headers == [(b"b3", T + b"-" + S + b"-0-" + P),
                       (b"x-b3-traceid", T), (b"x-b3-spanid", S), (b"x-b3-parentspanid", P),
                       (b"x-b3-sampled", b"0")]
    headers = []
    inject(headers, B3, T, S, b"", True, b"")
    assert headers == [(b"b3", T + b"-" + S + b"-1")]


def test_what_is_written_reads_back() -> None:
    for fmt in (W3C, B3, B3_MULTI):
        headers: list[tuple[bytes, bytes]] = []
        inject(headers, fmt, T, S, P, True, b"")
        got = extract(headers)
        assert got is not None and (got.trace_id, got.span_id, got.sampled) == (T, S, 1), fmt


_NAMES = st.sampled_from([b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid",
                          b"x-b3-sampled", b"x-b3-flags", b"x-b3-parentspanid", b"host"])


@given(st.lists(st.tuples(_NAMES, st.binary(max_size=80)), max_size=8))
def test_any_bytes_in_trace_headers_never_raise_and_ids_are_hex(
        headers: list[tuple[bytes, bytes]]) -> None:
    got = extract(headers)
    if got is not None:
        for ident, size in ((got.trace_id, 32), (got.span_id, 16)):
            assert ident == b"" or (len(ident) == size and ident == ident.lower()
                                    and all(c in b"0123456789abcdef" for c in ident))
        assert b"\r" not in got.tracestate and b"\n" not in got.tracestate
