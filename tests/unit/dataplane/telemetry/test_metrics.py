"""The hand-rolled registry renders valid Prometheus text with cumulative buckets."""

from __future__ import annotations

from tulle.dataplane.telemetry.metrics import Registry


def test_counter_gauge_histogram_render() -> None:
    r = Registry()
    c = r.counter("t_requests_total", "Requests.", ("code",))
    c.labels("200").value += 3
    c.labels('we"ird\n').value += 1
    g = r.gauge("t_active", "Active.")
    g.labels().value = 2
    h = r.histogram("t_ms", "Duration.", ("l",), buckets=(1, 10))
    child = h.labels("x")
    for v in (0.5, 5, 50):
        child.observe(v)
    text = r.render()
    assert "# TYPE t_requests_total counter" in text
    assert 't_requests_total{code="200"} 3' in text
    assert 't_requests_total{code="we\\"ird\\n"} 1' in text
    assert "t_active 2" in text
    assert 't_ms_bucket{l="x",le="1"} 1' in text
    assert 't_ms_bucket{l="x",le="10"} 2' in text
    assert 't_ms_bucket{l="x",le="+Inf"} 3' in text
    assert 't_ms_sum{l="x"} 55.5' in text
    assert 't_ms_count{l="x"} 3' in text


def test_families_without_series_are_not_rendered_and_names_are_unique() -> None:
    r = Registry()
    a = r.counter("t_x_total", "X.")
    assert r.counter("t_x_total", "X again.") is a
    assert r.render() == "\n"
