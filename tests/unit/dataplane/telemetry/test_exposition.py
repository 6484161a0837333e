"""/metrics in both formats: Prometheus text 0.0.4 and OpenMetrics 1.0.0, read back by
independent parsers (prometheus_client's, and Prometheus' own `promtool` when installed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from tulle.dataplane.listeners.admin import wants_openmetrics
from tulle.dataplane.telemetry.metrics import Registry


def _registry() -> Registry:
    r = Registry()
    c = r.counter("t_requests_total", 'Requests, "quoted" and a back\\slash\nand a newline.',
                  ("code", "path"))
    c.labels("200", "/").value += 3
    c.labels("503", 'we"ird\\\nvalue').value += 1
    r.gauge("t_active", "Active.").labels().value = 2
    r.counter("t_no_suffix", "A counter named without _total.").labels().value = 5
    h = r.histogram("t_ms", "Duration.", ("l",), buckets=(0.5, 1, 10))
    for v in (0.25, 5, 50, 1):
        h.labels("x").observe(v)
    return r


def test_prometheus_text_parses_back_with_the_same_values_and_escapes() -> None:
    fams = {f.name: f for f in text_parse(_registry().render())}
    req = {s.labels["path"]: s.value for s in fams["t_requests"].samples}
    assert req == {"/": 3, 'we"ird\\\nvalue': 1}
    assert fams["t_requests"].documentation == 'Requests, "quoted" and a back\\slash\nand a newline.'
    buckets = {s.labels.get("le"): s.value for s in fams["t_ms"].samples
               if s.name == "t_ms_bucket"}
    assert buckets == {"0.5": 1, "1": 2, "10": 3, "+Inf": 4}


def test_openmetrics_parses_back_strictly() -> None:
    text = _registry().render(openmetrics=True)
    assert text.endswith("# EOF\n")
    assert "# TYPE t_requests counter" in text  # the family without _total; samples keep it
    assert 't_requests_total{code="200",path="/"} 3' in text
    assert "# TYPE t_no_suffix unknown" in text
    fams = {f.name: f for f in om_parse(text)}  # raises on anything OpenMetrics forbids
    assert fams["t_requests"].type == "counter"
    assert {s.labels["path"]: s.value for s in fams["t_requests"].samples} == {
        "/": 3, 'we"ird\\\nvalue': 1}
    assert fams["t_requests"].documentation == 'Requests, "quoted" and a back\\slash\nand a newline.'
    assert fams["t_ms"].type == "histogram"
    count = [s.value for s in fams["t_ms"].samples if s.name == "t_ms_count"]
    assert count == [4]
    assert fams["t_no_suffix"].type == "unknown"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed "
                    "(scripts/install-system-deps.sh test)")
def test_promtool_accepts_the_text_exposition() -> None:
    r = _registry()
    done = subprocess.run(["promtool", "check", "metrics"], check=False, input=r.render().encode(),
                          capture_output=True, timeout=30)
    # promtool's lint may warn about names (exit 3), never about a broken format (exit 1).
    assert done.returncode in (0, 3), done.stderr
    assert b"error while linting" not in done.stderr


@pytest.mark.parametrize(("accept", "want"), [
    (b"", False),
    (b"*/*", False),
    (b"text/plain", False),
    (b"application/openmetrics-text", True),
    # Prometheus 2.x's own header.
    (b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
     b"q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),
    (b"text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5", False),
    (b"application/openmetrics-text;q=0", False),
    (b"application/openmetrics-text;q=bogus", False),
    (b"APPLICATION/OpenMetrics-Text ; q=0.9, text/plain;q=0.8", True),
    (b",,;;==,", False),
])
def test_content_negotiation(accept: bytes, want: bool) -> None:
    assert wants_openmetrics(accept) is want


@given(st.binary(max_size=512))
def test_any_accept_header_is_answered_without_raising(accept: bytes) -> None:
    assert wants_openmetrics(accept) in (True, False)
