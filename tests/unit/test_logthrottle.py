"""The per-key log throttle: every kind of event logged at once, a repeating one bounded to one
line per interval with the count it stands for, and a bounded table of keys."""

from __future__ import annotations

import logging

import pytest

from tulle.logthrottle import ThrottledByKey

LOG = logging.getLogger("tulle.test.throttle")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_first_of_each_key_at_once_then_one_line_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOG.name)
    log = ThrottledByKey(LOG, every=10.0)
    for i in range(3):
        log(("shop/a", "address"), 100.0 + i, "proxy %s refused: %s", "shop/a", "address")
    log(("shop/a", "labels"), 101.0, "proxy %s refused: %s", "shop/a", "labels")
    assert _lines(caplog) == ["proxy shop/a refused: address", "proxy shop/a refused: labels"]
    log(("shop/a", "address"), 109.9, "proxy %s refused: %s", "shop/a", "address")
    assert len(_lines(caplog)) == 2  # still inside the interval: counted, not logged
    log(("shop/a", "address"), 110.0, "proxy %s refused: %s", "shop/a", "address")
    assert _lines(caplog)[-1] == "proxy shop/a refused: address (3 more since the last line)"
    log(("shop/a", "address"), 120.0, "proxy %s refused: %s", "shop/a", "address")
    assert _lines(caplog)[-1] == "proxy shop/a refused: address"  # none left out since


def test_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOG.name)
    log = ThrottledByKey(LOG, every=10.0, max_keys=2)
    for i in range(5):
        log((str(i),), 1.0, "refused %s", i)
    assert len(log._seen) <= 2
    assert len(_lines(caplog)) == 5
