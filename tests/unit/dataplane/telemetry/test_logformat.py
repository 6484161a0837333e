"""Rendering records: JSON, compiled text formats (Envoy's command syntax), escaping, and the
trace id and start time an access record carries."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.telemetry.access_log import trace_id_of
from tulle.dataplane.telemetry.logformat import TextFormat, render_json, request_headers
from tulle.dataplane.telemetry.starttime import start_time

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_json_keeps_the_order_and_escapes_peer_text() -> None:
    line = render_json({"b": 1, "a": None, "f": 1.5, "p": "/é\n\x1b"})
    assert line == '{"b":1,"a":null,"f":1.5,"p":"/é\\n\\u001b"}'
    assert "\n" not in line and json.loads(line)["p"] == "/é\n\x1b"


def test_text_format_fields_literals_missing_values_and_lengths() -> None:
    fmt = TextFormat('[%START_TIME%] "%METHOD% %PATH:4%" %RESPONSE_CODE% %UPSTREAM_HOST%%')
    line = fmt.render({"start_time": "T", "method": "GET", "path": "/abcdef",
                       "response_code": 0, "upstream_host": None})
    assert line == '[T] "GET /abc" 0 -%'


def test_text_format_escapes_control_characters() -> None:
    fmt = TextFormat("%PATH% end")
    assert fmt.render({"path": "/a\nFAKE LINE\x1b[31m"}) == "/a\\x0aFAKE LINE\\x1b[31m end"


def test_req_reads_headers_and_pseudo_headers_with_alternatives() -> None:
    fmt = TextFormat("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(USER-AGENT):3% %REQ(X-NONE)%")
    values = request_headers(fmt, {b":path": b"/p", b":method": b"GET"},
                             [(b"user-agent", b"curl/8"), (b"x-other", b"1")])
    assert fmt.render(values) == "/p cur -"
    values = request_headers(fmt, {b":path": b"/p"}, [(b"x-envoy-original-path", b"/orig")])
    assert fmt.render(values).startswith("/orig ")


def test_response_flags_long() -> None:
    fmt = TextFormat("%RESPONSE_FLAGS_LONG%")
    assert fmt.render({"response_flags": "UF,URX"}) == \
        "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    assert fmt.render({"response_flags": "-"}) == "-"


def test_trace_ids_from_w3c_and_b3() -> None:
    assert trace_id_of([(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode())]) == TRACE
    assert trace_id_of([(b"x-b3-traceid", TRACE.upper().encode())]) == TRACE
    assert trace_id_of([(b"x-b3-traceid", b"a3ce929d0e0e4736")]) == "0" * 16 + "a3ce929d0e0e4736"
    assert trace_id_of([(b"b3", f"{TRACE}-00f067aa0ba902b7-1".encode())]) == TRACE
    assert trace_id_of([(b"b3", b"0")]) is None  # a sampling decision only
    assert trace_id_of([(b"traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")]) is None
    assert trace_id_of([(b"traceparent", b"00-zz-x-01")]) is None
    assert trace_id_of([]) is None


def test_start_time_is_envoys_default() -> None:
    assert start_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123Z"


@given(st.lists(st.tuples(st.sampled_from([b"traceparent", b"x-b3-traceid", b"b3", b"x"]),
                          st.binary(max_size=80)), max_size=6))
def test_peer_trace_headers_never_break_a_record(headers: list[tuple[bytes, bytes]]) -> None:
    out = trace_id_of(headers)
    assert out is None or (len(out) == 32 and all(c in "0123456789abcdef" for c in out))


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30),
       st.binary(max_size=40))
def test_no_header_value_can_break_a_line(fmt: str, value: bytes) -> None:
    text = TextFormat(fmt + "%REQ(X-A)%")
    line = text.render(request_headers(text, {}, [(b"x-a", value)]))
    assert len(line.splitlines()) <= 1 and "\r" not in line and "\n" not in line
