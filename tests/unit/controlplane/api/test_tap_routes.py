"""`status` of `GET /api/v1/tap`: a code, a class or a range (ADR 0056)."""

from __future__ import annotations

import pytest

from tulle.controlplane.api.tap_routes import parse_status


@pytest.mark.parametrize(("text", "want"), [
    ("503", (503, 503)), ("5xx", (500, 599)), ("2XX", (200, 299)), ("500-504", (500, 504)),
])
def test_status_forms(text: str, want: tuple[int, int]) -> None:
    assert parse_status(text) == want


@pytest.mark.parametrize("text", ["6xx", "99", "600", "504-500", "abc", "", "5x", "1e3"])
def test_bad_status_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_status(text)
