"""Cutting client values for records and spans (ADR 0103): untouched within the bound, the
first bytes and the number left out past it (the last bytes for `x-forwarded-for`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.telemetry.clip import cut, cut_head, cut_text


def test_within_the_bound_nothing_changes() -> None:
    assert cut(b"abc", 3) == b"abc" and cut_head(b"abc", 3) == b"abc"
    assert cut_text("abc", 3) == "abc"


def test_past_the_bound_the_value_says_how_much_was_left_out() -> None:
    assert cut(b"abcdef", 2) == b"ab...(+4 bytes)"
    assert cut_head(b"1.2.3.4, 10.0.0.1", 8) == b"(+9 bytes)...10.0.0.1"
    assert cut_text("abcdef", 2) == "ab...(+4 bytes)"


@given(st.binary(max_size=400), st.integers(min_value=1, max_value=300))
def test_a_cut_value_is_bounded_and_keeps_what_it_says(value: bytes, bound: int) -> None:
    out = cut(value, bound)
    assert len(out) <= bound + len(b"...(+400 bytes)")
    assert out.startswith(value[:bound])
    if out != value:
        assert out.endswith(b"...(+%d bytes)" % (len(value) - bound))
    tail = cut_head(value, bound)
    assert tail.endswith(value[-bound:] if len(value) > bound else value)
